//! Windows implementation of the `network` API: the network cost hint of
//! `GetNetworkConnectivityHint` (iphlpapi, Windows 10 2004 and newer). The function is looked
//! up at run time (`GetProcAddress`), so the exe still starts where it is missing (older
//! Windows, Wine 8): there the answer is unknown. A fixed or variable cost is metered.
//!
//! Every `unsafe` block is one Win32 call with its `// SAFETY:` reasoning; the loaded library
//! is owned by [`Library`], so it is freed on every path.

use windows_sys::Win32::Foundation::{ERROR_SUCCESS, FreeLibrary, HMODULE, WIN32_ERROR};
use windows_sys::Win32::Networking::WinSock::{
    NL_NETWORK_CONNECTIVITY_COST_HINT, NL_NETWORK_CONNECTIVITY_HINT,
    NetworkConnectivityCostHintFixed, NetworkConnectivityCostHintUnrestricted,
    NetworkConnectivityCostHintVariable,
};
use windows_sys::Win32::System::LibraryLoader::{
    GetProcAddress, LOAD_LIBRARY_SEARCH_SYSTEM32, LoadLibraryExW,
};

use super::Metered;

/// `GetNetworkConnectivityHint`'s signature.
type ConnectivityHintFn =
    unsafe extern "system" fn(hint: *mut NL_NETWORK_CONNECTIVITY_HINT) -> WIN32_ERROR;

/// A DLL loaded from System32, freed when dropped.
struct Library(HMODULE);

impl Library {
    /// Loads `name` (NUL-terminated UTF-16) from System32 only.
    fn system32(name: &[u16]) -> Option<Library> {
        // SAFETY: `name` is NUL-terminated; no file handle; the flag restricts the search to
        // System32. A null result means failure.
        let module = unsafe {
            LoadLibraryExW(
                name.as_ptr(),
                std::ptr::null_mut(),
                LOAD_LIBRARY_SEARCH_SYSTEM32,
            )
        };
        (!module.is_null()).then_some(Library(module))
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the module was loaded by LoadLibraryExW and is freed once, here.
        unsafe { FreeLibrary(self.0) };
    }
}

pub(super) async fn detect() -> Metered {
    let name: Vec<u16> = "iphlpapi.dll\0".encode_utf16().collect();
    let Some(library) = Library::system32(&name) else {
        tracing::debug!("iphlpapi.dll cannot be loaded: metered unknown");
        return Metered::Unknown;
    };
    // SAFETY: `library` holds a loaded module; the name is a NUL-terminated C string.
    let Some(address) =
        (unsafe { GetProcAddress(library.0, c"GetNetworkConnectivityHint".as_ptr().cast()) })
    else {
        tracing::debug!(
            "GetNetworkConnectivityHint is missing (before Windows 10 2004, or Wine): metered unknown"
        );
        return Metered::Unknown;
    };
    // SAFETY: the exported GetNetworkConnectivityHint has exactly this signature (iphlpapi.h).
    let hint_fn: ConnectivityHintFn = unsafe { std::mem::transmute(address) };
    // SAFETY: NL_NETWORK_CONNECTIVITY_HINT is plain data; zeroed is a valid value to fill.
    let mut hint: NL_NETWORK_CONNECTIVITY_HINT = unsafe { std::mem::zeroed() };
    // SAFETY: `hint` is a valid out pointer; `library` stays loaded across the call.
    let status = unsafe { hint_fn(&mut hint) };
    if status != ERROR_SUCCESS {
        tracing::debug!(status, "GetNetworkConnectivityHint failed: metered unknown");
        return Metered::Unknown;
    }
    from_cost_hint(hint.ConnectivityCost)
}

/// A fixed or variable cost is metered, an unrestricted one is not; unknown otherwise.
fn from_cost_hint(cost: NL_NETWORK_CONNECTIVITY_COST_HINT) -> Metered {
    if cost == NetworkConnectivityCostHintFixed || cost == NetworkConnectivityCostHintVariable {
        Metered::Yes
    } else if cost == NetworkConnectivityCostHintUnrestricted {
        Metered::No
    } else {
        Metered::Unknown
    }
}

#[cfg(test)]
mod tests {
    use windows_sys::Win32::Networking::WinSock::NetworkConnectivityCostHintUnknown;

    use super::*;

    #[test]
    fn fixed_and_variable_costs_are_metered() {
        assert_eq!(
            from_cost_hint(NetworkConnectivityCostHintFixed),
            Metered::Yes
        );
        assert_eq!(
            from_cost_hint(NetworkConnectivityCostHintVariable),
            Metered::Yes
        );
        assert_eq!(
            from_cost_hint(NetworkConnectivityCostHintUnrestricted),
            Metered::No
        );
        assert_eq!(
            from_cost_hint(NetworkConnectivityCostHintUnknown),
            Metered::Unknown
        );
    }
}
