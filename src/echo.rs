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
/// the peer reads slowly, which slows our reading of it: back-pressure end to end. Each echo is
/// fed to the socket before the next frame is read, so a peer that sends its last messages and
/// closes at once still gets their echoes before our close.
pub async fn echo(conn: &mut Connection) -> Result<()> {
    while let Some(msg) = conn.read_msg().await? {
        conn.send(msg).await?;
        conn.written().await?;
    }
    Ok(())
}
