//! Fuzzes the frame reader: any bytes, read as a text frame by a logged-in or anonymous
//! connection, must give exactly one outcome and never panic.
#![no_main]

use chat_server::protocol::{Incoming, read_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for logged_in in [false, true] {
        match read_request(text, 65_536, logged_in) {
            Incoming::Request { .. } | Incoming::Refused { .. } => {}
        }
    }
});
