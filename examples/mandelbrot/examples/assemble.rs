//! Assembles the tiles `ova run` wrote into a PNG:
//! `cargo run -p mandelbrot --example assemble -- RESULTS_DIR out.png`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, out] = args.as_slice() else {
        return Err("usage: assemble RESULTS_DIR OUT.png".into());
    };
    let mut tiles = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "out") {
            let bytes = std::fs::read(&path)?;
            match ova_guest::decode::<mandelbrot::Tile>(&bytes) {
                Ok(t) => tiles.push(t),
                Err(e) => eprintln!("skipping {}: {e}", path.display()),
            }
        }
    }
    let png = mandelbrot::assemble_png(&mandelbrot::DEFAULT_VIEW, &tiles);
    std::fs::write(out, png)?;
    println!("{} tiles → {out}", tiles.len());
    Ok(())
}
