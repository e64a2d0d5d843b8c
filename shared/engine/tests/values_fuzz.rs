//! Property tests of the parsers that take what callers send: JSON and WAVE text against the
//! WIT types of a real component's exports (`tests/components/wasm/types.wasm`, built by
//! `make components`). Whatever comes in, the answer is a value or a typed error, never a panic,
//! and a value accepted goes to wasmtime and back unchanged.

use std::sync::OnceLock;

use invicta_engine::exports::{ExportedFunction, exported_functions};
use invicta_engine::values::{json_to_value, val_to_value, value_to_val, wave_to_json};
use invicta_engine::{Config, Engine};
use proptest::prelude::*;
use serde_json::Value as Json;

fn exports() -> &'static [ExportedFunction] {
    static EXPORTS: OnceLock<Vec<ExportedFunction>> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/components/wasm/types.wasm"
        );
        let bytes =
            std::fs::read(path).expect("tests/components/wasm/types.wasm: run `make components`");
        let engine = Engine::new(&Config::default()).expect("an engine");
        let component = wasmtime::component::Component::new(&engine.engine, &bytes)
            .expect("types.wasm compiles");
        let exports = exported_functions(&engine.engine, &component);
        assert!(exports.len() >= 10, "types.wasm exports its echo functions");
        exports
    })
}

/// Any JSON, nested a little.
fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(Json::from),
        ".{0,8}".prop_map(Json::String),
        prop_oneof![
            Just("NaN"),
            Just("Infinity"),
            Just("red"),
            Just("circle"),
            Just("ok")
        ]
        .prop_map(|s| Json::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("ok".to_string()),
                    Just("err".to_string()),
                    Just("name".to_string()),
                    Just("age".to_string()),
                    Just("circle".to_string()),
                    ".{0,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_json_is_a_value_or_a_typed_error(pick in any::<prop::sample::Index>(), given in json()) {
        let exports = exports();
        let function = &exports[pick.index(exports.len())];
        for (name, ty) in &function.params {
            if let Ok(value) = json_to_value(name, &given, ty) {
                let val = value_to_val(&value);
                prop_assert_eq!(val_to_value(&val), Some(value.clone()));
                // What the API shows of it is accepted again as the same value.
                let shown = value.to_json();
                prop_assert_eq!(json_to_value(name, &shown, ty).ok(), Some(value));
            }
        }
    }

    #[test]
    fn any_wave_text_is_json_or_a_typed_error(pick in any::<prop::sample::Index>(), text in ".{0,40}") {
        let exports = exports();
        let function = &exports[pick.index(exports.len())];
        for (name, ty) in &function.params {
            let _ = wave_to_json(name, &text, ty);
        }
    }

    #[test]
    fn deep_wave_text_is_refused_not_recursed(depth in 1_usize..5_000) {
        let exports = exports();
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        for function in exports {
            for (name, ty) in &function.params {
                let _ = wave_to_json(name, &text, ty);
            }
        }
    }
}
