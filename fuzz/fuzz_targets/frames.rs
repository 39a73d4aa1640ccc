//! Raw bytes where WebSocket frames should be: whatever arrives, the connection layer answers
//! with a close code or reads data, and never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nanachat::config::ConnectionConfig;
use nanachat::connection::{Connection, serve_connection};
use nanachat::echo::Echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (server_io, mut client_io) = tokio::io::duplex(64 * 1024);
        let config = ConnectionConfig {
            close_timeout: std::time::Duration::from_millis(50),
            ..ConnectionConfig::default()
        };
        let server = async {
            let conn = Connection::accept(
                Box::new(nanachat::connection::ReadAhead::new(server_io, Vec::new())),
                None,
                &config,
                tokio_util::sync::CancellationToken::new(),
            )
            .await;
            serve_connection(&Echo, conn).await;
        };
        let client = async {
            let _ = client_io.write_all(data).await;
            let _ = client_io.shutdown().await;
            let mut sink = Vec::new();
            let _ = client_io.read_to_end(&mut sink).await;
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(server, client);
        })
        .await
        .expect("the connection ends");
    });
});
