//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the files it finds, but cargo
//! only tracks the ones that existed at the last build.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
