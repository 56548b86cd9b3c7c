//! Embeds every `sql/NNNN_name.sql` migration into the binary, so a new
//! migration can never be forgotten in a hand-kept list; and the commit it
//! was built from, for `--version` (`GENALYTICS_COMMIT` overrides it, e.g.
//! when building from a tarball without `.git`).

use std::fmt::Write as _;
use std::{env, fs, path::Path};

fn main() {
    embed_commit();
    println!("cargo:rerun-if-changed=sql");
    let mut files: Vec<_> = fs::read_dir("sql")
        .expect("sql/ directory")
        .map(|entry| entry.expect("readable sql/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();

    let mut code = String::from(
        "/// Migrations in `sql/`, in order.\npub static MIGRATIONS: &[EmbeddedMigration] = &[\n",
    );
    for path in &files {
        let stem = path.file_stem().unwrap().to_str().expect("UTF-8 file name");
        let (number, name) = stem
            .split_once('_')
            .unwrap_or_else(|| panic!("{stem}: migrations are named NNNN_name.sql"));
        let version: i32 = number
            .parse()
            .unwrap_or_else(|_| panic!("{stem}: migrations are named NNNN_name.sql"));
        let absolute = fs::canonicalize(path).unwrap();
        let absolute = absolute.to_str().expect("UTF-8 path");
        writeln!(
            code,
            "    EmbeddedMigration {{ version: {version}, name: {name:?}, sql: include_str!({absolute:?}) }},"
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = Path::new(&env::var("OUT_DIR").unwrap()).join("migrations.rs");
    fs::write(out, code).unwrap();
}

fn embed_commit() {
    println!("cargo:rerun-if-env-changed=GENALYTICS_COMMIT");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = env::var("GENALYTICS_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !commit.is_empty()).then_some(commit)
    });
    println!(
        "cargo:rustc-env=GENALYTICS_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
