"""Every public function and module constructor is annotated (``mypy --strict`` then checks the bodies in CI)."""

import inspect

import pytest

import etsc_triton as et
from etsc_triton.demo import model as demo_model

PUBLIC_FUNCTIONS = [getattr(et, name) for name in et.__all__ if inspect.isfunction(getattr(et, name))]
ORACLES = [getattr(et.reference, name) for name in et.reference.__all__]
CONSTRUCTORS = [getattr(et.nn, name).__init__ for name in et.nn.__all__ if inspect.isclass(getattr(et.nn, name))]
NN_FUNCTIONS = [getattr(et.nn, name) for name in et.nn.__all__ if inspect.isfunction(getattr(et.nn, name))]
# the application's model is typed the same way (its module moved out of nn with the rest of the application)
NN_FUNCTIONS += [demo_model.generate, demo_model.make_decoder, demo_model.TNNLanguageModel.__init__]


def test_the_public_surface_is_found():
    assert len(PUBLIC_FUNCTIONS) == 11 and len(ORACLES) == 15  # the ops; their oracles and float64 evaluations
    assert len(CONSTRUCTORS) >= 3 and NN_FUNCTIONS


@pytest.mark.parametrize("fn", PUBLIC_FUNCTIONS + ORACLES + CONSTRUCTORS + NN_FUNCTIONS,
                         ids=lambda fn: f"{fn.__module__}.{fn.__qualname__}")
def test_signature_is_annotated(fn):
    signature = inspect.signature(inspect.unwrap(fn))
    missing = [name for name, p in signature.parameters.items()
               if name != "self" and p.annotation is inspect.Parameter.empty]
    assert not missing, f"{fn.__qualname__}: parameters without a type: {missing}"
    if fn.__name__ != "__init__":
        assert signature.return_annotation is not inspect.Signature.empty, f"{fn.__qualname__}: no return type"


def test_package_is_marked_typed():
    from importlib.resources import files

    assert files("etsc_triton").joinpath("py.typed").is_file()
