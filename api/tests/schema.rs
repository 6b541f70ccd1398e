//! The checked-in `schema.graphql` is the schema the code builds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

#[test]
fn schema_graphql_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema.graphql");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = api::sdl();
    assert!(
        checked_in == generated,
        "schema.graphql is out of date with the code; regenerate it with\n\n    \
         cargo run -q -- schema > schema.graphql\n\nand commit the result"
    );
}
