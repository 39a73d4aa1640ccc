//! The seed's `hello()` coroutine: two hellos that each await a one-second sleep, run on one
//! event loop (a current-thread runtime). While one sleeps the other runs, so both finish after
//! about one second, not two. Run: `cargo run --example hello_sleep`.

use std::time::Duration;

use tokio::time::Instant;

/// Prints `Hello world!`, sleeps one second without blocking the loop, prints `Hello again!`.
async fn hello(who: &str) {
    println!("Hello world! {} ({who})", nanachat::clock::python_now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("Hello again! {} ({who})", nanachat::clock::python_now());
}

/// Runs two hellos concurrently and returns how long both took.
async fn two_hellos() -> Duration {
    let start = Instant::now();
    tokio::join!(hello("first"), hello("second"));
    start.elapsed()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let took = two_hellos().await;
    println!("both done in {:.2} s", took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn two_sleeping_hellos_take_one_second_not_two() {
        // Paused time: the runtime jumps the clock to each timer, so this measures the schedule
        // exactly, not the machine's speed.
        let took = two_hellos().await;
        assert_eq!(took, Duration::from_secs(1));
    }
}
