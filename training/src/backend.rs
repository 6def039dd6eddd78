//! The single place where burn's backend is chosen.
//!
//! burn 0.22 dispatches on the device instead of a backend type parameter, so switching to a
//! GPU backend later means changing these two functions and the `burn` features in the
//! workspace `Cargo.toml`, nothing else.

use burn::tensor::Device;

/// Device for training: the CPU `flex` backend with autodiff.
pub fn train_device() -> Device {
    Device::flex().autodiff()
}

/// Device for inference (evaluation, export): the same backend without autodiff.
pub fn infer_device() -> Device {
    Device::flex()
}
