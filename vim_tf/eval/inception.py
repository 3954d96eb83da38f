"""Inception v3 files users have, loaded as `scores.ScoringNetwork`s for the paper's FID / IS.

Nothing is downloaded: the user names a local (or gs://) file or directory, and the format is
detected from it (`load`). Every format maps images in [0, 1] to what its network expects:

| path | network | resize | input values |
|---|---|---|---|
| SavedModel dir (`saved_model.pb`) whose "scores" / "serving_default" / "default" signature, or whose `__call__` (TF-GAN's TF-Hub Inception module), returns {"pool_3", "logits"} | TF-GAN's Inception v3 | 299 x 299, bilinear | [-1, 1] |
| the same with {"features", "logits"} | a vim_tf scoring network (classifier export) | the signature's static size, if any | [0, 1] |
| frozen GraphDef `*.pb` (or a dir holding `classify_image_graph_def.pb`), e.g. the 2015 Inception graph of the original FID / IS code | its `pool_3` and `softmax/logits` | inside the graph (its own `ResizeBilinear` to 299); 299 x 299 bilinear if it has none | [0, 255] |
| Keras weights `*.h5` / `*.hdf5` / `*.weights.h5` of `keras.applications.InceptionV3` (with the top layer) | features = `avg_pool` output, logits = the top layer before softmax | 299 x 299, bilinear | [-1, 1] |

Frozen graph contract: nodes `ExpandDims` (the image batch input, [1, H, W, 3] float in the
file, any batch size here), `pool_3` ([N, 1, 1, 2048]) and `softmax/logits` = MatMul(reshape of
pool_3, weights) + biases, optionally under one name scope (e.g. "FID_Inception_Net/"). The
graph's own `pool_3/_reshape` fixes the batch to 1, so the logits are recomputed from `pool_3`
with the graph's softmax weights and biases; the batch dimension of `ExpandDims` is made
dynamic by feeding it through `import_graph_def`'s input map. As in the original FID code,
images go in at their own size and the graph resizes them.

Example:

    network = inception.load("/models/classify_image_graph_def.pb")
    features, logits = network.activations(images)  # [N, 2048], [N, 1008] float64
"""

import os
import warnings

import tensorflow as tf

from vim_tf.eval.scores import ScoringNetwork
from vim_tf.utils import fs

INCEPTION_SIZE = (299, 299)
FROZEN_GRAPH_FILE = "classify_image_graph_def.pb"
KERAS_SUFFIXES = (".h5", ".hdf5")
FORMATS = (
    "a vim_tf classifier model dir, a SavedModel / TF-Hub dir (saved_model.pb) returning "
    "{features, logits} or {pool_3, logits}, a frozen Inception GraphDef (*.pb, or a dir "
    f"holding {FROZEN_GRAPH_FILE}), or Keras InceptionV3 weights (*.h5, *.weights.h5)"
)


def load(path, name=None):
    """The scoring network in the file or directory `path` (format detected; see the module
    docstring). A vim_tf classifier model dir is loaded by `networks.load_scoring_network`.

    Raises:
      ValueError: `path` does not exist or is none of the formats, naming the accepted ones.
    """
    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"classifier {path!r} does not exist; it must be {FORMATS}")
    if tf.io.gfile.isdir(path):
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            return ScoringNetwork.from_saved_model(path, name=name)
        if tf.io.gfile.exists(os.path.join(path, FROZEN_GRAPH_FILE)):
            return from_frozen_graph(os.path.join(path, FROZEN_GRAPH_FILE), name=name)
        raise ValueError(
            f"classifier dir {path!r} holds neither saved_model.pb nor {FROZEN_GRAPH_FILE}; "
            f"it must be {FORMATS}"
        )
    if os.path.basename(path) == "saved_model.pb":
        return ScoringNetwork.from_saved_model(os.path.dirname(path), name=name)
    if path.endswith(".pb"):
        return from_frozen_graph(path, name=name)
    if path.endswith(KERAS_SUFFIXES):
        return from_keras_weights(path, name=name)
    raise ValueError(f"classifier file {path!r} is of no known format; it must be {FORMATS}")


def _node(nodes, name, path):
    """The node called `name`, possibly under one name scope ("scope/name")."""
    if name in nodes:
        return nodes[name]
    found = [n for n in nodes if n.endswith("/" + name)]
    if len(found) != 1:
        what = "no node" if not found else f"several nodes ({found[:3]})"
        raise ValueError(
            f"{path!r} has {what} named {name!r}: not the frozen Inception graph of the FID code "
            "(needs ExpandDims, pool_3 and softmax/logits)"
        )
    return nodes[found[0]]


def _input_name(node_input):
    """A NodeDef input string ("name", "name:1", "^ctrl") as a tensor name."""
    name = node_input.lstrip("^")
    return name if ":" in name else name + ":0"


def from_frozen_graph(path, name=None):
    """The frozen Inception GraphDef at `path` (see the module docstring for the contract),
    imported inside a `tf.compat.v1.wrap_function` and pruned to images -> pool_3, logits.

    Args:
      path: the `.pb` file (binary GraphDef), e.g. classify_image_graph_def.pb.
      name: reported with the scores; defaults to "inception_graph_def:<absolute path>".
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"{path!r} is not a binary GraphDef ({type(e).__name__}: {e})") from e
    nodes = {n.name: n for n in graph_def.node}
    expand = _node(nodes, "ExpandDims", path)
    pool = _node(nodes, "pool_3", path)
    logits = _node(nodes, "softmax/logits", path)
    matmul = nodes.get(_input_name(logits.input[0]).split(":")[0])
    if logits.op not in ("BiasAdd", "Add", "AddV2") or matmul is None or matmul.op != "MatMul":
        raise ValueError(
            f"{path!r}: softmax/logits must be MatMul(pool_3, weights) + biases, got "
            f"{logits.op} of {list(logits.input)}"
        )
    weights_name, bias_name = _input_name(matmul.input[1]), _input_name(logits.input[1])
    resizes_itself = any(n.op == "ResizeBilinear" for n in graph_def.node)

    def run(images):
        pool3, w, b = tf.compat.v1.import_graph_def(
            graph_def,
            input_map={_input_name(expand.name): images},
            return_elements=[_input_name(pool.name), weights_name, bias_name],
            name="inception",
        )
        features = tf.reshape(pool3, [-1, w.shape[0]])
        return {"features": features, "logits": tf.matmul(features, w) + b}

    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    wrapped = tf.compat.v1.wrap_function(run, [spec])
    # Keep only what images -> outputs needs (the graph's JPEG decoding input, its batch-1
    # reshape and softmax are left out).
    fn = wrapped.prune(wrapped.inputs[0], wrapped.structured_outputs)
    return ScoringNetwork(
        fn,
        name or f"inception_graph_def:{os.path.abspath(path)}",
        image_size=None if resizes_itself else INCEPTION_SIZE,
        input_range=(0.0, 255.0),
    )


def from_keras_weights(path, name=None):
    """`keras.applications.InceptionV3` with the weights file at `path` (the top layer
    included): features = the global average pool output [B, 2048], logits = the top layer's
    output before softmax [B, 1000].

    Args:
      path: a `.weights.h5` file (Keras 3) or a legacy `.h5` / `.hdf5` weights or model file
        (e.g. inception_v3_weights_tf_dim_ordering_tf_kernels.h5).
      name: reported with the scores; defaults to "keras_inception_v3:<absolute path>".
    """
    import keras

    model = keras.applications.InceptionV3(weights=None, classifier_activation=None)
    with fs.local_copy(path) as local, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(local)
            # Keras warns (instead of failing) about layers it left at their random weights.
            skipped = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
            if skipped:
                raise ValueError(f"{len(skipped)} groups of layers not in the file: {skipped[0]}")
        except Exception as e:
            raise ValueError(
                f"could not load {path!r} into keras.applications.InceptionV3 with its top layer "
                f"(a '_notop' file has no logits): {type(e).__name__}: {e}"
            ) from e
    net = keras.Model(
        model.inputs, {"features": model.get_layer("avg_pool").output, "logits": model.output}
    )

    @tf.function(reduce_retracing=True)
    def fn(images):
        return net(images, training=False)

    network = ScoringNetwork(
        fn,
        name or f"keras_inception_v3:{os.path.abspath(path)}",
        image_size=INCEPTION_SIZE,
        input_range=(-1.0, 1.0),
    )
    network._model = net
    return network
