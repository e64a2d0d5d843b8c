//! Reads its configuration through `wasi:config/store`, and remembers what it read: replay must
//! give it the same answers.

wit_bindgen::generate!({ world: "configured", generate_all });

use std::cell::RefCell;

use wasi::config::store;

thread_local! {
    static READ: RefCell<Vec<Option<String>>> = const { RefCell::new(Vec::new()) };
}

struct Component;

impl Guest for Component {
    fn get(key: String) -> Option<String> {
        store::get(&key).ok().flatten()
    }

    fn keys() -> Vec<String> {
        store::get_all()
            .map(|all| all.into_iter().map(|(k, _)| k).collect())
            .unwrap_or_default()
    }

    fn remember(key: String) -> Option<String> {
        let value = store::get(&key).ok().flatten();
        READ.with(|read| read.borrow_mut().push(value.clone()));
        value
    }

    fn remembered() -> Vec<Option<String>> {
        READ.with(|read| read.borrow().clone())
    }
}

export!(Component);
