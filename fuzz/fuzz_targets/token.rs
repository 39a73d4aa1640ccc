//! Checking a token: any bytes are refused with a reason or verified, never a panic; nothing
//! but a token signed with the secret verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nanachat::auth::Auth;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let auth = Auth::new(b"the fuzzer's secret, long enough").expect("valid secret");
    if let Ok(claims) = auth.verify(text, 0) {
        // Only possible for our own signature: re-minting must give a token that verifies too.
        assert!(auth.verify(&auth.mint(&claims), 0).is_ok());
    }
});
