use clap::Parser;

fn main() {
    let cli = rampart::cli::Cli::parse();
    match rampart::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        // What failed after a signal failed because of it: say so, not why.
        Err(_) if rampart::process::interrupted() => {
            // After a hang-up the terminal may be gone: a failed write must not panic.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "rampart: interrupted by a signal; what it had started was stopped (virtual machines and test networks too) and its work directories removed"
            );
            std::process::exit(130);
        }
        Err(error) => {
            eprintln!("rampart: error: {error:#}");
            std::process::exit(1);
        }
    }
}
