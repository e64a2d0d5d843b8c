//! What a component exports: its functions, named as in WIT (`add` at the top level,
//! `pkg:name/iface.{fn}` inside an exported interface), with their parameter and result types.

use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, ResourceType, Type};

use crate::values::type_name_with;

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
    /// The names of the component's exported resources, by type (from their constructors
    /// and methods), to spell `own<R>` and `borrow<R>`.
    pub resources: std::sync::Arc<Vec<(ResourceType, String)>>,
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
                    ty: type_name_with(ty, &self.resources),
                })
                .collect(),
            result: match self.results.as_slice() {
                [] => None,
                [one] => Some(type_name_with(one, &self.resources)),
                many => Some(format!(
                    "tuple<{}>",
                    many.iter()
                        .map(|t| type_name_with(t, &self.resources))
                        .collect::<Vec<_>>()
                        .join(", ")
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
        resources: Default::default(),
    }
}

/// The names of the resources among `functions`, by type: from the results of their
/// constructors and the `self` of their methods.
fn resource_names(functions: &[ExportedFunction]) -> Vec<(ResourceType, String)> {
    let mut out: Vec<(ResourceType, String)> = Vec::new();
    for f in functions {
        let named = if let Some(name) = f.function.strip_prefix("[constructor]") {
            f.results.first().and_then(|t| match t {
                Type::Own(ty) => Some((*ty, name.to_string())),
                _ => None,
            })
        } else if let Some(rest) = f.function.strip_prefix("[method]") {
            let name = rest.split('.').next().unwrap_or(rest);
            f.params.first().and_then(|(_, t)| match t {
                Type::Borrow(ty) => Some((*ty, name.to_string())),
                _ => None,
            })
        } else {
            None
        };
        if let Some((ty, name)) = named
            && !out.iter().any(|(t, _)| *t == ty)
        {
            out.push((ty, name));
        }
    }
    out
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
    let resources = std::sync::Arc::new(resource_names(&out));
    for f in &mut out {
        f.resources = resources.clone();
    }
    out
}
