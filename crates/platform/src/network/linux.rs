//! Linux implementation of the `network` API: NetworkManager's `Metered` property
//! (`org.freedesktop.NetworkManager`, an `NMMetered` value) on the D-Bus system bus, which
//! honours `DBUS_SYSTEM_BUS_ADDRESS`. No bus, no NetworkManager or an error: unknown.

use super::Metered;

const SERVICE: &str = "org.freedesktop.NetworkManager";
const PATH: &str = "/org/freedesktop/NetworkManager";

pub(super) async fn detect() -> Metered {
    match ask_network_manager().await {
        Ok(value) => from_nm_metered(value),
        Err(error) => {
            tracing::debug!(%error, "NetworkManager cannot say whether the connection is metered");
            Metered::Unknown
        }
    }
}

async fn ask_network_manager() -> zbus::Result<u32> {
    let bus = zbus::Connection::system().await?;
    let proxy: zbus::Proxy<'_> = zbus::proxy::Builder::new(&bus)
        .destination(SERVICE)?
        .path(PATH)?
        .interface(SERVICE)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    proxy.get_property::<u32>("Metered").await
}

/// `NMMetered`: 1 yes and 3 guessed yes are metered, 2 no and 4 guessed no are not, 0 (and
/// anything newer) unknown.
fn from_nm_metered(value: u32) -> Metered {
    match value {
        1 | 3 => Metered::Yes,
        2 | 4 => Metered::No,
        _ => Metered::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_managers_values_map_to_the_three_answers() {
        let answers: Vec<Metered> = (0..=5).map(from_nm_metered).collect();
        assert_eq!(
            answers,
            [
                Metered::Unknown,
                Metered::Yes,
                Metered::No,
                Metered::Yes,
                Metered::No,
                Metered::Unknown
            ]
        );
    }
}
