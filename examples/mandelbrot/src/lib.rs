//! Mandelbrot tiles: each unit renders one tile of an image (escape-time iteration counts,
//! f64); the submitter decodes the tiles with [`Tile`] and assembles a PNG with
//! [`assemble_png`].
//!
//! Pack and run (from the repository root):
//! `scripts/build-examples.sh && ova job pack examples/mandelbrot -o mandelbrot.ova &&
//! ova run mandelbrot.ova -o out/ && cargo run --manifest-path examples/Cargo.toml -p mandelbrot
//! --example assemble -- out/ mandelbrot.png`

use serde::{Deserialize, Serialize};

/// What to render.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// Image width in pixels (a multiple of `tile`).
    pub width: u32,
    /// Image height in pixels (a multiple of `tile`).
    pub height: u32,
    /// Tile side in pixels.
    pub tile: u32,
    /// Real part of the image centre.
    pub cx: f64,
    /// Imaginary part of the image centre.
    pub cy: f64,
    /// Width of the image in the complex plane.
    pub span: f64,
    /// Iteration cap.
    pub max_iter: u32,
}

/// The view the example job renders: 1024×1024 in 64 tiles of 128×128.
pub const DEFAULT_VIEW: View = View {
    width: 1024,
    height: 1024,
    tile: 128,
    cx: -0.743_643_887,
    cy: 0.131_825_904,
    span: 0.015,
    max_iter: 2000,
};

impl View {
    /// Number of tiles.
    pub fn tiles(&self) -> u32 {
        (self.width / self.tile) * (self.height / self.tile)
    }
}

/// One rendered tile: a unit's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tile {
    /// Tile index (row-major).
    pub index: u32,
    /// Left pixel column.
    pub x0: u32,
    /// Top pixel row.
    pub y0: u32,
    /// Iteration counts, row-major, `tile * tile` of them.
    pub iters: Vec<u16>,
}

/// Escape-time iteration count at `(x, y)`.
#[inline]
pub fn escape(x: f64, y: f64, max_iter: u32) -> u32 {
    let (mut zr, mut zi) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < max_iter {
        let zr2 = zr * zr;
        let zi2 = zi * zi;
        if zr2 + zi2 > 4.0 {
            break;
        }
        zi = 2.0 * zr * zi + y;
        zr = zr2 - zi2 + x;
        i += 1;
    }
    i
}

/// Renders tile `index` of `view`.
pub fn render_tile(view: &View, index: u32) -> Tile {
    let per_row = view.width / view.tile;
    let (x0, y0) = ((index % per_row) * view.tile, (index / per_row) * view.tile);
    let scale = view.span / view.width as f64;
    let left = view.cx - view.span / 2.0;
    let top = view.cy - scale * view.height as f64 / 2.0;
    let mut iters = Vec::with_capacity((view.tile * view.tile) as usize);
    for py in y0..y0 + view.tile {
        let y = top + py as f64 * scale;
        for px in x0..x0 + view.tile {
            let x = left + px as f64 * scale;
            iters.push(escape(x, y, view.max_iter).min(u16::MAX as u32) as u16);
        }
    }
    Tile { index, x0, y0, iters }
}

/// Parses a unit's arguments, `--tile I [--tile-size PX]`, into the view (the default one,
/// cut into tiles of `PX` pixels — a divisor of 1024 from 16 up; 128 when not given) and the
/// tile index.
pub fn parse_unit(args: &[String]) -> Result<(View, u32), String> {
    let (index_args, size) = match args {
        [_, _, flag, px] if flag == "--tile-size" => {
            let px: u32 = px.parse().map_err(|_| format!("bad tile size {px:?}"))?;
            (&args[..2], Some(px))
        }
        _ => (args, None),
    };
    let index = parse_args(index_args)?;
    let mut view = DEFAULT_VIEW;
    if let Some(px) = size {
        if px < 16 || !view.width.is_multiple_of(px) || !view.height.is_multiple_of(px) {
            return Err(format!("tile size {px} must divide {} and be at least 16", view.width));
        }
        view.tile = px;
    }
    if index >= view.tiles() {
        return Err(format!("tile {index} is out of range (the view has {})", view.tiles()));
    }
    Ok((view, index))
}

/// Parses a unit's arguments: `--tile I`.
pub fn parse_args(args: &[String]) -> Result<u32, String> {
    match args {
        [flag, i] if flag == "--tile" => i.parse().map_err(|_| format!("bad tile index {i:?}")),
        _ => Err(format!("expected `--tile I`, got {args:?}")),
    }
}

/// Assembles tiles into an RGB PNG (uncompressed deflate: no dependencies). Missing tiles are
/// black.
pub fn assemble_png(view: &View, tiles: &[Tile]) -> Vec<u8> {
    let (w, h) = (view.width as usize, view.height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    for t in tiles {
        for (k, &n) in t.iters.iter().enumerate() {
            let (dx, dy) = (k % view.tile as usize, k / view.tile as usize);
            let (x, y) = (t.x0 as usize + dx, t.y0 as usize + dy);
            if x >= w || y >= h {
                continue;
            }
            let c = colour(n as u32, view.max_iter);
            rgb[(y * w + x) * 3..][..3].copy_from_slice(&c);
        }
    }
    png::encode_rgb(w as u32, h as u32, &rgb)
}

fn colour(n: u32, max: u32) -> [u8; 3] {
    if n >= max {
        return [0, 0, 0];
    }
    let t = (n as f64).sqrt() / (max as f64).sqrt();
    let r = (9.0 * (1.0 - t) * t * t * t * 255.0) as u8;
    let g = (15.0 * (1.0 - t) * (1.0 - t) * t * t * 255.0) as u8;
    let b = (8.5 * (1.0 - t) * (1.0 - t) * (1.0 - t) * t * 255.0) as u8;
    [r, g, b]
}

mod png {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// An RGB8 PNG with stored (uncompressed) deflate blocks.
    pub fn encode_rgb(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
        let mut raw = Vec::with_capacity(rgb.len() + h as usize);
        for row in rgb.chunks(w as usize * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut z = vec![0x78, 0x01];
        let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
        for (i, b) in blocks.iter().enumerate() {
            z.push((i + 1 == blocks.len()) as u8);
            z.extend_from_slice(&(b.len() as u16).to_le_bytes());
            z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
            z.extend_from_slice(b);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        z.extend_from_slice(&((b << 16) | a).to_be_bytes());
        let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_arguments() {
        let a = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(parse_unit(&a("--tile 3")), Ok((DEFAULT_VIEW, 3)));
        let (v, i) = parse_unit(&a("--tile 255 --tile-size 64")).unwrap();
        assert_eq!((v.tile, v.tiles(), i), (64, 256, 255));
        assert!(parse_unit(&a("--tile 256 --tile-size 64")).unwrap_err().contains("out of range"));
        assert!(parse_unit(&a("--tile 1 --tile-size 100")).is_err());
        assert!(parse_unit(&a("--tile 64")).is_err());
    }

    #[test]
    fn tiles_cover_the_image_and_png_is_well_formed() {
        let view = View { width: 32, height: 32, tile: 16, max_iter: 50, ..DEFAULT_VIEW };
        let tiles: Vec<Tile> = (0..view.tiles()).map(|i| render_tile(&view, i)).collect();
        assert_eq!(tiles.len(), 4);
        assert_eq!(tiles[3].x0, 16);
        assert_eq!(tiles[3].y0, 16);
        let png = assemble_png(&view, &tiles);
        assert!(png.starts_with(b"\x89PNG"));
        assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82])); // IEND's CRC
        assert_eq!(escape(0.0, 0.0, 100), 100);
        assert_eq!(escape(2.0, 2.0, 100), 1);
    }
}
