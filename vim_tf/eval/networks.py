"""Loading the scoring network (the classifier whose features and logits give FID, IS, KID and
class accuracy), below the evaluators that use it."""

from vim_tf.eval import inception
from vim_tf.eval.scores import ScoringNetwork
from vim_tf.models import loading
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib


def load_scoring_network(path):
    """The network that scores images: a vim_tf classifier model dir, or an Inception v3 /
    scoring network file in a format `vim_tf.eval.inception.load` detects (SavedModel / TF Hub
    dir, frozen GraphDef, Keras InceptionV3 weights).

    Returns:
      a `ScoringNetwork`.
    """
    if fs.exists(fs.join(path, model_dir_lib.MODEL_INFO_FILE)):
        model = loading.load_classifier(path)
        return ScoringNetwork.from_keras(model, name=f"vim_tf_classifier:{fs.abspath(path)}")
    try:
        return inception.load(path)
    except ValueError as e:
        raise ValueError(f"--classifier={path!r}: {e}") from e
