//! The rewrite engine: a pure function of (statement text, snapshot) with no I/O. The
//! pre-filter decides whether a statement needs parsing at all.

mod prefilter;

pub use prefilter::Prefilter;
