//! Integration tests of comp-datasets on real Parquet files (pyarrow-written fixtures and demo shards).
mod bad_input;
mod common;
mod demo;
mod layouts;
mod partition;
mod resume;
