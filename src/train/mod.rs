//! Training: stages, optimiser, schedules, checkpoints, metrics and plots.
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod stage;
pub mod trainer;
