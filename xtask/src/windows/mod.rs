//! The Windows side of the lane: Wine ([`wine`]), compiling the installer with Inno Setup
//! ([`inno`]) and running it silently ([`setup`]), and the tasks built on them: `wine-test`,
//! `installer` and `wine-e2e` (with its network scenario, [`wine_net`]); the MSI package built
//! with msitools ([`wixl`]) and its task `msi`.

pub mod inno;
pub mod installer;
pub mod msi;
pub mod setup;
pub mod wine;
pub mod wine_e2e;
pub mod wine_msi;
pub mod wine_net;
pub mod wine_test;
pub mod wixl;
