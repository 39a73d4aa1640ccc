//! The echo mode: every text and binary message goes back as it came. It is the conformance
//! target (Autobahn|Testsuite runs against it) and the smallest [`Handler`] there is.

use crate::Result;
use crate::connection::{Connection, Handler};

/// Echoes every data message back to its sender.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    async fn handle(&self, conn: &mut Connection) -> Result<()> {
        echo(conn).await
    }
}

/// The echo loop, for either side of a connection (the Autobahn client uses it too). Waits when
/// the peer reads slowly, which slows our reading of it: back-pressure end to end. Echoes are
/// pipelined — the next frame is read while the writer writes — and a peer that sends its last
/// messages and closes at once still gets every echo before our answer to its close: the
/// connection's close gate holds that close until they are written (`gate.rs`).
pub async fn echo(conn: &mut Connection) -> Result<()> {
    while let Some(msg) = conn.read_msg().await? {
        conn.send(msg).await?;
    }
    Ok(())
}
