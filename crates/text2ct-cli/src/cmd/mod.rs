//! One file per command.

pub mod bench;
pub mod clip;
pub mod demo;
pub mod device;
pub mod effects;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod model;
pub mod phantom;
pub mod prepare;
pub mod preview;
pub mod render;
pub mod schedule;
pub mod serve;
pub mod text;
pub mod train;
pub mod unet;
pub mod vae;
