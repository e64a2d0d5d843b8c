//! What a component exports: its functions, named as in WIT (`add` at the top level,
//! `pkg:name/iface.{fn}` inside an exported interface), with their parameter and result types.

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, Type};

use crate::values::type_name;

/// An exported function with its wasmtime types, for calling it.
#[derive(Clone)]
pub struct ExportedFunction {
    /// The API's name for it.
    pub name: String,
    /// The exported instance holding it, if it is not at the top level.
    pub instance: Option<String>,
    /// Its name inside the instance (or at the top level).
    pub function: String,
    pub params: Vec<(String, Type)>,
    pub results: Vec<Type>,
}

/// An exported function's signature as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSignature {
    pub name: String,
    pub params: Vec<ParamSignature>,
    /// The WIT type of the result; `None` for a function without one.
    pub result: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSignature {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

impl ExportedFunction {
    pub fn signature(&self) -> FunctionSignature {
        FunctionSignature {
            name: self.name.clone(),
            params: self
                .params
                .iter()
                .map(|(name, ty)| ParamSignature {
                    name: name.clone(),
                    ty: type_name(ty),
                })
                .collect(),
            result: match self.results.as_slice() {
                [] => None,
                [one] => Some(type_name(one)),
                many => Some(format!(
                    "tuple<{}>",
                    many.iter().map(type_name).collect::<Vec<_>>().join(", ")
                )),
            },
        }
    }

    /// Whether `name`, as a caller wrote it, names this function: the canonical
    /// `pkg:name/iface.{fn}` or the looser `pkg:name/iface.fn` and `pkg:name/iface/fn`.
    pub fn is_named(&self, name: &str) -> bool {
        if name == self.name {
            return true;
        }
        match &self.instance {
            Some(instance) => {
                name.strip_prefix(instance.as_str())
                    .and_then(|rest| rest.strip_prefix('.').or_else(|| rest.strip_prefix('/')))
                    == Some(self.function.as_str())
            }
            None => false,
        }
    }
}

fn function(
    name: String,
    instance: Option<&str>,
    function: &str,
    ty: &ComponentFunc,
) -> ExportedFunction {
    ExportedFunction {
        name,
        instance: instance.map(str::to_string),
        function: function.to_string(),
        params: ty.params().map(|(n, t)| (n.to_string(), t)).collect(),
        results: ty.results().collect(),
    }
}

/// Every function the component exports, at the top level and one instance deep (WIT
/// interfaces), sorted by name.
pub fn exported_functions(engine: &Engine, component: &Component) -> Vec<ExportedFunction> {
    let ty = component.component_type();
    let mut out = Vec::new();
    for (name, export) in ty.exports(engine) {
        match &export.ty {
            ComponentItem::ComponentFunc(f) => out.push(function(name.to_string(), None, name, f)),
            ComponentItem::ComponentInstance(instance) => {
                for (fname, item) in instance.exports(engine) {
                    if let ComponentItem::ComponentFunc(f) = &item.ty {
                        out.push(function(
                            format!("{name}.{{{fname}}}"),
                            Some(name),
                            fname,
                            f,
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
