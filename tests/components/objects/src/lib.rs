//! A resource, `tally`, and what can be done with one over the API: made by its constructor, a
//! static function or a free function, used through methods and borrows, given away as an
//! owned parameter, and dropped (its destructor counts it out).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({ world: "objects" });

use exports::invicta::objects::tallies::{Guest, GuestTally, Tally, TallyBorrow};

static ALIVE: AtomicU32 = AtomicU32::new(0);

struct MyTally {
    name: RefCell<String>,
    total: Cell<i64>,
}

impl MyTally {
    fn make(name: String, start: i64) -> MyTally {
        ALIVE.fetch_add(1, Ordering::Relaxed);
        MyTally {
            name: RefCell::new(name),
            total: Cell::new(start),
        }
    }
}

impl Drop for MyTally {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GuestTally for MyTally {
    fn new(name: String, start: i64) -> Self {
        MyTally::make(name, start)
    }

    fn add(&self, delta: i64) -> i64 {
        self.total.set(self.total.get().wrapping_add(delta));
        self.total.get()
    }

    fn get(&self) -> i64 {
        self.total.get()
    }

    fn name(&self) -> String {
        self.name.borrow().clone()
    }

    fn merge(a: TallyBorrow<'_>, b: TallyBorrow<'_>) -> Tally {
        let (a, b) = (a.get::<MyTally>(), b.get::<MyTally>());
        Tally::new(MyTally::make(
            format!("{}+{}", a.name(), b.name()),
            a.get().wrapping_add(b.get()),
        ))
    }
}

struct Component;

impl Guest for Component {
    type Tally = MyTally;

    fn make(start: i64) -> Tally {
        Tally::new(MyTally::make("made".into(), start))
    }

    fn peek(t: TallyBorrow<'_>) -> i64 {
        t.get::<MyTally>().get()
    }

    fn close(t: Tally) -> i64 {
        t.get::<MyTally>().get()
    }

    fn alive() -> u32 {
        ALIVE.load(Ordering::Relaxed)
    }
}

export!(Component);
