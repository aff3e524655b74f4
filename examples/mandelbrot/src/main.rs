//! Work unit: renders tile `--tile I [--tile-size PX]` of the default view; output is a
//! postcard `Tile`.
fn main() {
    let (view, index) = mandelbrot::parse_unit(&ova_guest::args())
        .unwrap_or_else(|e| ova_guest::fail(ova_guest::EXIT_BAD_INPUT, &e));
    ova_guest::output_typed(&mandelbrot::render_tile(&view, index));
}
