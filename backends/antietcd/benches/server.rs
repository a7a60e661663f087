//! Server benchmark (work in progress).

fn main() {}
