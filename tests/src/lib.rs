//! Test support lives in `tests/common`.
