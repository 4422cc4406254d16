//! The API, exercised in-process through the real router (`Router::oneshot`): one binary, many
//! modules, each test with its own data directory.

mod common;

mod checkout;
mod isolation;
mod orders;
