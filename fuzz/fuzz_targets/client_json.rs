//! Decoding a client's JSON request: any text gets a request or a refusal, never a panic, and a
//! request read back from its own JSON is the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nanachat::protocol::{ClientMsg, parse_client};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = parse_client(text) {
        let again = serde_json::to_string(&msg).expect("a request serializes");
        let back: ClientMsg = parse_client(&again).expect("its own JSON parses");
        assert_eq!(back, msg);
    }
});
