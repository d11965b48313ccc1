//! Training: stages, optimiser, schedules, checkpoints, metrics and plots.
pub mod checkpoint;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod stage;
