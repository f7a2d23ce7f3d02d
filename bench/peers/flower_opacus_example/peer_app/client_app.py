"""peer_app ClientApp: one round of local DP-SGD with a PrivacyEngine made fresh for the round.

As in Flower's Opacus example, the epsilon reported is this PrivacyEngine's, i.e. of this round only;
it is not the cumulative privacy loss of a client that trains in several rounds (dpfl's is).
"""

from __future__ import annotations

import warnings

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from opacus import PrivacyEngine

from peer_app.task import delta_of, make_model, make_optimizer, train, train_loader

warnings.filterwarnings("ignore", category=UserWarning)
torch.set_num_threads(1)  # one-thread Ray actors, like dpfl's workers

app = ClientApp()


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    """Load the global model, privatise it with a new PrivacyEngine, train, reply weights and epsilon."""
    cfg = context.run_config
    partition_id = int(context.node_config["partition-id"])
    model = make_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = train_loader(cfg, partition_id)
    num_examples = len(loader.dataset)  # type: ignore[arg-type]

    privacy_engine = PrivacyEngine()
    private_model, optimizer, private_loader = privacy_engine.make_private(
        module=model, optimizer=make_optimizer(model, cfg), data_loader=loader,
        noise_multiplier=float(cfg["noise-multiplier"]), max_grad_norm=float(cfg["max-grad-norm"]),
        poisson_sampling=True)
    train_loss = train(private_model, private_loader, optimizer, int(cfg["local-epochs"]))
    epsilon = float(privacy_engine.get_epsilon(delta=delta_of(cfg)))

    content = RecordDict({
        "arrays": ArrayRecord(private_model._module.state_dict()),
        "metrics": MetricRecord({"num-examples": num_examples, "train-loss": train_loss, "epsilon": epsilon}),
    })
    return Message(content=content, reply_to=msg)
