use clap::Parser;

fn main() {
    let cli = rampart::cli::Cli::parse();
    match rampart::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("rampart: error: {error:#}");
            std::process::exit(1);
        }
    }
}
