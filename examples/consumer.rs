//! The seed's generator hand-off (`consumer()` driven by `c.send(…)`), in stable Rust.
//!
//! Stable Rust has no generators, but it has their engine: an `async fn` compiles to a coroutine
//! that runs until its next `.await` point and resumes there when polled again. So:
//!
//! | Python (the seed)                  | here                                              |
//! |------------------------------------|---------------------------------------------------|
//! | `def consumer(): … n = yield r`    | `async fn consumer(co: Co)`: `let n = co.yield_(r).await` |
//! | `c = consumer()` (runs nothing)    | `Generator::new(consumer)` (runs nothing either)  |
//! | `c.send(x)`: run to the next yield | `c.send(x)`: poll once; the yielded value comes back |
//! | `return` → `StopIteration`         | the future completes → `send` returns `Err(StopIteration)` |
//! | `None` / `if not n`                | `Option<u32>` / `let Some(n) = n else { return }` |
//!
//! The printed trace is the seed's, line for line; the `StopIteration` that ends Python's run
//! with a traceback is reported on stderr. Run: `cargo run --example consumer`.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The two slots a generator and its caller pass values through.
struct Slots<S, Y> {
    sent: Option<S>,
    yielded: Option<Y>,
}

/// The generator's side: what `yield` is.
struct Co<S, Y>(Rc<RefCell<Slots<S, Y>>>);

impl<S, Y> Co<S, Y> {
    /// `yield value`: hands `value` to the caller, suspends, and returns what the next `send` gives.
    fn yield_(&self, value: Y) -> impl Future<Output = S> + '_ {
        self.0.borrow_mut().yielded = Some(value);
        let mut suspended = false;
        std::future::poll_fn(move |_| {
            if !suspended {
                suspended = true;
                return Poll::Pending;
            }
            match self.0.borrow_mut().sent.take() {
                Some(value) => Poll::Ready(value),
                None => Poll::Pending,
            }
        })
    }
}

/// Raised (returned) when the generator has finished, as Python's `StopIteration`.
#[derive(Debug)]
struct StopIteration;

/// The caller's side: a suspended coroutine and its slots.
struct Generator<S, Y> {
    slots: Rc<RefCell<Slots<S, Y>>>,
    body: Pin<Box<dyn Future<Output = ()>>>,
}

impl<S: 'static, Y: 'static> Generator<S, Y> {
    fn new<F: Future<Output = ()> + 'static>(body: impl FnOnce(Co<S, Y>) -> F) -> Self {
        let slots = Rc::new(RefCell::new(Slots {
            sent: None,
            yielded: None,
        }));
        let body = Box::pin(body(Co(slots.clone())));
        Self { slots, body }
    }

    /// `gen.send(value)`: resumes the body until its next yield, and returns what it yielded.
    fn send(&mut self, value: S) -> Result<Y, StopIteration> {
        self.slots.borrow_mut().sent = Some(value);
        let mut cx = Context::from_waker(Waker::noop());
        match self.body.as_mut().poll(&mut cx) {
            Poll::Ready(()) => Err(StopIteration),
            Poll::Pending => self.slots.borrow_mut().yielded.take().ok_or(StopIteration),
        }
    }
}

/// The seed's `consumer()`, printing through `say`.
async fn consumer(co: Co<Option<u32>, String>, say: Rc<dyn Fn(String)>) {
    say("[CONSUMER] Entering function...".into());
    let mut r = String::new();
    loop {
        say("[CONSUMER] Entering while loop...".into());
        let n = co.yield_(r.clone()).await;
        say("[CONSUMER] Fetched n...".into());
        let Some(n) = n else {
            say("[CONSUMER] Before returning...".into());
            return;
        };
        say(format!("[CONSUMER] Consuming {n}"));
        r = format!("Consumed {n}!");
    }
}

/// The seed's main part; returns the `StopIteration` that ends it.
fn run(say: Rc<dyn Fn(String)>) -> StopIteration {
    say("[MAIN] Entering main...".into());
    let inner = say.clone();
    let mut c = Generator::new(move |co| consumer(co, inner));
    say("[MAIN] Generating generator object...".into());
    let step = |c: &mut Generator<Option<u32>, String>, value, name: &str| {
        say(format!("[MAIN] Starting {name} send..."));
        let r = c.send(value)?;
        say(format!("[MAIN] Ending {name} send..."));
        let capital = name[..1].to_uppercase() + &name[1..];
        say(format!("[MAIN] {capital} send end with result '{r}'..."));
        Ok::<(), StopIteration>(())
    };
    let steps = [(None, "first"), (Some(2), "second"), (None, "last")];
    for (value, name) in steps {
        if let Err(stop) = step(&mut c, value, name) {
            return stop;
        }
    }
    unreachable!("the consumer returns on the last send")
}

fn main() {
    let StopIteration = run(Rc::new(|line| println!("{line}")));
    // Python ends here with a traceback; we say the same and end normally.
    eprintln!("StopIteration: the consumer returned");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_seeds_trace_in_the_seeds_order() {
        let lines = Rc::new(RefCell::new(Vec::new()));
        let sink = lines.clone();
        run(Rc::new(move |line| sink.borrow_mut().push(line)));
        let expected = [
            "[MAIN] Entering main...",
            "[MAIN] Generating generator object...",
            "[MAIN] Starting first send...",
            "[CONSUMER] Entering function...",
            "[CONSUMER] Entering while loop...",
            "[MAIN] Ending first send...",
            "[MAIN] First send end with result ''...",
            "[MAIN] Starting second send...",
            "[CONSUMER] Fetched n...",
            "[CONSUMER] Consuming 2",
            "[CONSUMER] Entering while loop...",
            "[MAIN] Ending second send...",
            "[MAIN] Second send end with result 'Consumed 2!'...",
            "[MAIN] Starting last send...",
            "[CONSUMER] Fetched n...",
            "[CONSUMER] Before returning...",
        ];
        assert_eq!(*lines.borrow(), expected);
    }
}
