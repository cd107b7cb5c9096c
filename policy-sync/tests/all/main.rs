//! policy-sync CLI tests.

mod bundle_cli;
