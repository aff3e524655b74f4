//! Work unit: seed on stdin, `--samples N` in the args; output is a postcard `Estimate`.
fn main() {
    let input = ova_guest::input_text();
    let (seed, samples) = montecarlo::parse_unit(&input, &ova_guest::args())
        .unwrap_or_else(|e| ova_guest::fail(ova_guest::EXIT_BAD_INPUT, &e));
    ova_guest::output_typed(&montecarlo::simulate(seed, samples));
}
