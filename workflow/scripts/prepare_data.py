from antigrok.runlog import to_log_file
from antigrok.training.data import prepare_dataset, save_dataset

with to_log_file(snakemake.log[0]):
    dataset_cfg = snakemake.params.dataset
    data_cfg = dict(snakemake.config["data"], **dataset_cfg)
    dataset = prepare_dataset(dataset_cfg, data_cfg)
    save_dataset(dataset, snakemake.output[0])
    print(f"{len(dataset['y_train'])} train and {len(dataset['y_test'])} test examples")
