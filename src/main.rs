//! `orfeas`: the ORFEAS Studio desktop app (GUI by default) and its command line.

fn main() -> anyhow::Result<()> {
    orfeas::app::run_gui(orfeas::app::AppConfig::default())
}
