//! Echoes a value of every WIT type, for tests of the host's JSON mapping.

// The generated export shims for `describe` take many flattened arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ world: "types" });

struct Component;

impl Guest for Component {
    fn echo_u8(x: u8) -> u8 {
        x
    }

    fn echo_u16(x: u16) -> u16 {
        x
    }

    fn echo_u32(x: u32) -> u32 {
        x
    }

    fn echo_u64(x: u64) -> u64 {
        x
    }

    fn echo_s8(x: i8) -> i8 {
        x
    }

    fn echo_s16(x: i16) -> i16 {
        x
    }

    fn echo_s32(x: i32) -> i32 {
        x
    }

    fn echo_s64(x: i64) -> i64 {
        x
    }

    fn echo_f32(x: f32) -> f32 {
        x
    }

    fn echo_f64(x: f64) -> f64 {
        x
    }

    fn echo_bool(x: bool) -> bool {
        x
    }

    fn echo_char(x: char) -> char {
        x
    }

    fn echo_string(x: String) -> String {
        x
    }

    fn echo_list(x: Vec<u32>) -> Vec<u32> {
        x
    }

    fn echo_tuple(x: (u8, String)) -> (u8, String) {
        x
    }

    fn echo_record(x: Person) -> Person {
        x
    }

    fn echo_variant(x: Shape) -> Shape {
        x
    }

    fn echo_enum(x: Color) -> Color {
        x
    }

    fn echo_option(x: Option<u32>) -> Option<u32> {
        x
    }

    fn echo_result(x: Result<u32, String>) -> Result<u32, String> {
        x
    }

    fn echo_flags(x: Perms) -> Perms {
        x
    }

    fn describe(p: Person, s: Shape) -> String {
        let email = p.email.as_deref().unwrap_or("none");
        let tags = p.tags.join(", ");
        let shape = match s {
            Shape::Circle(r) => format!("circle({r})"),
            Shape::Square(side) => format!("square({side})"),
            Shape::Point => "point".to_string(),
        };
        format!("{} ({}) <{email}> [{tags}]: {shape}", p.name, p.age)
    }

    fn nothing() {}
}

export!(Component);
