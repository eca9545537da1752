"""`ProximalOptimizer`: proximal Lk steps after any Keras optimizer's step."""

import math

import keras
from keras import ops

from keras_lk import _validation
from keras_lk.proximal import prox
from keras_lk.regularizers import (LkRegularizer, mark_proximal_handled,
                                   set_proximal_step, unwrap)


def _proximal_regularizer(variable):
    regularizer = unwrap(getattr(variable, "regularizer", None))
    if isinstance(regularizer, LkRegularizer) and regularizer.proximal:
        return regularizer
    return None


@keras.saving.register_keras_serializable(package="keras_lk")
class ProximalOptimizer(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer; adds the proximal step of Lk penalties.

    After each step of the wrapped optimizer, every trainable weight whose
    regularizer is `LkRegularizer(..., proximal=True)` is set to
    `prox(w, t, k)` with `t = lr_t * alpha / n` (reduction "mean", n the
    weight's size) or `t = lr_t * alpha` (reduction "sum", and k = inf),
    where `lr_t` is the learning rate of that step (schedules honoured). For
    k <= 1 this sets weights exactly to zero, which (sub)gradient descent
    never does. It all runs inside the compiled train step.

    With Adam and other adaptive optimizers the proximal step is decoupled
    from the adaptive scaling, as Keras applies `weight_decay`: `t` uses the
    raw learning rate, not Adam's per-weight step size (as in AdamW).

    Weights without a proximal regularizer are trained by the wrapped
    optimizer alone. The wrapper saves to `.keras` with the model and loads
    back (keras_lk imported), and training continues from there. Needs the
    TensorFlow backend; not for distribution strategies yet.

    Args:
        optimizer: A `keras.optimizers.Optimizer` instance: SGD, Adam, ...
        name: Name of the wrapper. Defaults to `"proximal_<inner name>"`.

    Example:

    >>> import keras, keras_lk, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
    ...     1, kernel_regularizer=keras_lk.LkRegularizer(
    ...         k=1, alpha=60.0, proximal=True))])
    >>> model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1)),
    ...               "mse")
    >>> _ = model.fit(np.ones((8, 3)), np.zeros((8, 1)), epochs=2, verbose=0)
    >>> int((model.layers[0].kernel.numpy() == 0).sum())  # exact zeros
    3
    """

    def __init__(self, optimizer, name=None, **kwargs):
        if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
                optimizer, ProximalOptimizer):
            raise _validation.invalid(
                "optimizer", "a keras.optimizers.Optimizer instance (not "
                "already a ProximalOptimizer)", optimizer)
        if kwargs:
            raise ValueError(
                "ProximalOptimizer takes no optimizer arguments of its own; "
                f"set them on the wrapped optimizer. Received: {sorted(kwargs)}")
        super().__init__(learning_rate=0.0,
                         name=name or f"proximal_{optimizer.name}")
        self.inner_optimizer = optimizer

    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        self._proximal = {}
        for variable in var_list:
            regularizer = _proximal_regularizer(variable)
            if regularizer is not None:
                self._proximal[id(variable)] = regularizer
                mark_proximal_handled(variable)
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        set_proximal_step(None)
        if not self.built:
            self.build(trainable_variables)
            self.built = True
        # The rate of this step: read it before the step advances schedules.
        learning_rate = ops.convert_to_tensor(self.inner_optimizer.learning_rate)
        self.inner_optimizer.apply(grads, trainable_variables)
        for variable in trainable_variables or self._trainable_variables:
            regularizer = self._proximal.get(id(variable))
            if regularizer is None:
                continue
            size = math.prod(variable.shape)
            t = regularizer.proximal_strength(learning_rate, size)
            variable.assign(prox(variable, t, regularizer.k))

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError(
            "ProximalOptimizer supports the TensorFlow backend only (stateful "
            "training steps).")

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # The base class sets its own (unused) rate while initialising.
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.learning_rate = learning_rate
        else:
            keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        # Keras calls this in the train step just before taking gradients.
        set_proximal_step(self)
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {"name": self.name, "optimizer":
                keras.saving.serialize_keras_object(self.inner_optimizer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)
