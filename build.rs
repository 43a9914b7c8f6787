// `sqlx::migrate!` embeds the migration files at compile time; without these lines a new
// migration would not trigger a rebuild (sqlx macro docs).
fn main() {
    println!("cargo:rerun-if-changed=migrations/sqlite");
    println!("cargo:rerun-if-changed=migrations/postgres");
}
