"""Zoo specs shared by the re-basin study tests: two seeds of a width-64 MLP on digits (trains in seconds)."""


def mlp_digits_spec(name: str, epochs: int, extra: str = "", batch_size: int = 32) -> str:
    """A zoo spec: MLP 64-64-64-10 (ReLU) on digits, Adam lr 3e-3, two training seeds, checkpoint at the end.

    Args:
        name: zoo name.
        epochs: training epochs.
        extra: TOML appended (e.g. an ``[lmc]`` section).
        batch_size: training batch size.

    Returns:
        TOML text.
    """
    return f"""
[zoo]
name = "{name}"

[dataset]
name = "digits"
seed = 0

[model]
name = "mlp"
width = 64
depth = 2
activation = "relu"

[training]
epochs = {epochs}
batch_size = {batch_size}
optimizer = "adam"
lr = 0.003

[checkpoints]
epochs = [{epochs}]

[grid]
"training.seed" = [0, 1]
{extra}"""
