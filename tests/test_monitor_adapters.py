"""The Lightning and Hugging Face adapters of antigrok.monitor, with the real libraries, on tiny
models on the CPU (nothing downloaded): the stop flag reaches each trainer, Lightning's logger
gets the values, and a missing library is one clear error naming the extra."""

import builtins
import importlib
import sys
import warnings
from collections import OrderedDict

import pandas as pd
import pytest
import torch

from antigrok.monitor import SpectralAlarmWarning

WIDTH = 24


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        OrderedDict(fc1=torch.nn.Linear(16, WIDTH), relu=torch.nn.ReLU(), fc2=torch.nn.Linear(WIDTH, WIDTH),
                    relu2=torch.nn.ReLU(), head=torch.nn.Linear(WIDTH, 4))
    )


def tiny_data(n=64):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 16, generator=generator), torch.randint(0, 4, (n,), generator=generator)


# ----------------------------------------------------------------------------- Lightning

lightning = pytest.importorskip("lightning.pytorch", reason="install antigrok[lightning] (in the test extra)")


class TinyModule(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log("train_acc", (logits.argmax(-1) == y).float().mean(), on_step=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def lightning_fit(tmp_path, max_steps, **callback_kwargs):
    from antigrok.monitor.lightning import SpectralMonitorCallback

    callback = SpectralMonitorCallback(csv_path=tmp_path / "spectra.csv", average_layers=["net.fc1", "net.fc2"],
                                       background=None, **callback_kwargs)
    logger = lightning.loggers.CSVLogger(tmp_path, name="logs")
    trainer = lightning.Trainer(max_steps=max_steps, accelerator="cpu", logger=logger, callbacks=[callback],
                                enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*tiny_data()), batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own advice (num_workers, ...), not the alarms
        warnings.simplefilter("always", SpectralAlarmWarning)
        trainer.fit(TinyModule(), loader)
    return trainer, callback


def test_lightning_callback_stops_the_trainer_and_logs(tmp_path):
    trainer, callback = lightning_fit(tmp_path, max_steps=40, every_n_steps=5, alpha_critical=100.0, stop_on=True)
    assert callback.monitor.stop_alarm.step == 5
    assert trainer.should_stop and trainer.global_step == 5  # stopped right after the alarm
    metrics = pd.read_csv(next((tmp_path / "logs").glob("version_*/metrics.csv")))
    assert "antigrok/mean_alpha" in metrics.columns and "antigrok/num_traps/net.fc2" in metrics.columns
    assert metrics.loc[metrics["antigrok/mean_alpha"].notna(), "step"].tolist() == [5]
    assert pd.read_csv(tmp_path / "spectra.csv").step.unique().tolist() == [5]


def test_lightning_callback_without_stop_runs_to_the_end_and_arms_on_metrics(tmp_path):
    with pytest.warns(SpectralAlarmWarning):
        trainer, callback = lightning_fit(tmp_path, max_steps=12, every_n_steps=4, alpha_critical=100.0,
                                          arm_when=lambda metrics: "train_acc" in metrics)
    assert trainer.global_step == 12 and not callback.monitor.should_stop
    assert callback.monitor.watch.armed_from in (1, 2)  # train_acc is logged from the first step on
    assert callback.monitor.first_firing("alpha_below_critical") == 4
    assert sorted(pd.read_csv(tmp_path / "spectra.csv").step.unique()) == [4, 8, 12]


# ----------------------------------------------------------------------------- Hugging Face

transformers = pytest.importorskip("transformers", reason="install antigrok[transformers] (in the test extra)")


class TinyClassifier(torch.nn.Module):
    """What the Trainer needs of a model: keyword inputs, a dict with the loss."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x, labels=None):
        logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.y = tiny_data()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        return {"x": self.x[index], "labels": self.y[index]}


def hf_train(tmp_path, max_steps, **callback_kwargs):
    from antigrok.monitor.transformers import SpectralMonitorCallback

    callback = SpectralMonitorCallback(csv_path=tmp_path / "spectra.csv", average_layers=["net.fc1", "net.fc2"],
                                       background=None, **callback_kwargs)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=0.05,
        report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=TinyClassifier(), args=args, train_dataset=TinyDataset(),
                                   callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectralAlarmWarning)
        trainer.train()
    return trainer, callback


def test_transformers_callback_stops_the_trainer(tmp_path):
    trainer, callback = hf_train(tmp_path, max_steps=40, every_n_steps=5, alpha_critical=100.0, stop_on=True)
    assert callback.monitor.stop_alarm.step == 5
    assert trainer.state.global_step == 5  # control.should_training_stop ended the loop there
    assert pd.read_csv(tmp_path / "spectra.csv").layer.unique().tolist() == ["net.fc1", "net.fc2"]  # head: 4 < 10


def test_transformers_callback_arms_on_logged_metrics(tmp_path):
    trainer, callback = hf_train(tmp_path, max_steps=6, every_n_steps=2, alpha_critical=100.0,
                                 arm_when=lambda metrics: "loss" in metrics)
    assert trainer.state.global_step == 6 and not callback.monitor.should_stop
    assert callback.monitor.watch.armed_from == 2  # the first log (step 1) is seen at the next step
    assert callback.monitor.first_firing("alpha_below_critical") == 2


# ----------------------------------------------------------------------------- without the library


@pytest.mark.parametrize(
    "module, libraries, extra",
    [
        ("antigrok.monitor.lightning", ("lightning", "pytorch_lightning"), "antigrok[lightning]"),
        ("antigrok.monitor.transformers", ("transformers",), "antigrok[transformers]"),
    ],
)
def test_a_missing_library_names_the_extra(monkeypatch, module, libraries, extra):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.split(".")[0] in libraries:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        importlib.import_module(module)
    monkeypatch.delitem(sys.modules, module, raising=False)  # the next import is the real one
