//! Pure types and decisions of the care domain; depends on nothing else in the crate.

pub mod alert;
pub mod care;
pub mod duration;
