//! `anxin test-rules`: rule test files (format in `config/tests/README.md`), the runner that
//! plays them against a [`world::World`], and the real world — the pipeline's shard, rules and
//! store on a virtual clock ([`harness`]). Nothing in the engine depends on this module.

pub mod harness;
pub mod runner;
pub mod testfile;
pub mod world;
