"""Golden cases: the data layers whose tops do not depend on files or Caffe's random generator (DummyData with
constant fillers), as Caffe's test_dummy_data_layer.cpp varies them; the others are compared with pycaffe in
tests/test_engine_datalayers.py (they need files written at test time)."""
from layer_goldens import Case

IP = ('layer { name: "ip" type: "InnerProduct" bottom: "a" top: "ip" '
      'inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }')


def dummy(name, param, tops=("a", "b"), **kw):
    top = " ".join(f'top: "{t}"' for t in tops)
    return Case(name, f'layer {{ name: "{name}" type: "DummyData" {top} dummy_data_param {{ {param} }} }}\n{IP}',
                **kw)


CASES = [
    dummy("dummydata_legacy_zeros", "num: 2 channels: 3 channels: 1 height: 4 width: 5"),
    dummy("dummydata_shape_one_filler", 'shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 1.5 }'),
    dummy("dummydata_fillers_per_top", 'shape { dim: 2 dim: 3 dim: 2 } shape { dim: 4 } '
          'data_filler { type: "constant" value: -0.5 } data_filler { type: "constant" value: 7 }'),
    dummy("dummydata_three_tops_test", 'shape { dim: 3 dim: 2 } data_filler { type: "constant" value: 2 }',
          tops=("a", "b", "c"), phase="TEST"),
]
