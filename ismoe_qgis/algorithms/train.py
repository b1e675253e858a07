"""ismoe:train: dataset cube -> model file (ISMoE or a baseline)."""
import os

from qgis.core import (QgsProcessingException, QgsProcessingOutputNumber, QgsProcessingParameterBoolean,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                       QgsProcessingParameterEnum, QgsProcessingParameterFile, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterString)

from ..options import CUBE_MODES, DEVICES, GAP_POLICIES, MEMORIES, MODEL_TYPES, ROUTER_INPUTS, SCHEDULES, SPLITS
from ..options import MIXTURE_ENUM as MIXTURES      # enum order: the default first
from . import presentation
from .base import IsmoeAlgorithm
from .common import check_writable, optional_date
from .qgis_compat import NUMBER_DOUBLE, NUMBER_INTEGER, PARAM_FLAG_ADVANCED, SOURCE_VECTOR_ANY, add_param_flags, optional


DATASET_FILTER = "ISMoE dataset (*.npz *.zarr *.zmetadata)"    # a .zarr cube is a folder: its path, or its .zmetadata
DEFAULT_ENSEMBLE = 1       # see the README's ensemble section for the measurements behind it


class TrainAlgorithm(IsmoeAlgorithm):
    DATASET, MODEL, DEVICE = "DATASET", "MODEL", "DEVICE"
    EPOCHS, BATCH_SIZE, LEARNING_RATE, SEED = "EPOCHS", "BATCH_SIZE", "LEARNING_RATE", "SEED"
    SAMPLES_PER_EPOCH, PATIENCE, VAL_START, TEST_START = "SAMPLES_PER_EPOCH", "PATIENCE", "VAL_START", "TEST_START"
    CONSECUTIVE_DAYS, MIXTURE, LR_SCHEDULE = "CONSECUTIVE_DAYS", "MIXTURE", "LR_SCHEDULE"
    MEMORY, SPIN_UP, SUPERVISED_DAYS, THREADS = "MEMORY", "SPIN_UP", "SUPERVISED_DAYS", "THREADS"
    ENSEMBLE = "ENSEMBLE"
    CUBE_IN_MEMORY = "CUBE_IN_MEMORY"
    SPLIT, FOLDS, BLOCK_SIZE = "SPLIT", "FOLDS", "BLOCK_SIZE"
    FOLD_LAYER, FOLD_ID_FIELD, FOLD_FIELD = "FOLD_LAYER", "FOLD_ID_FIELD", "FOLD_FIELD"
    GAP_POLICY, ROUTER_INPUT, HIDDEN, CONV_CHANNELS, DROPOUT = (
        "GAP_POLICY", "ROUTER_INPUT", "HIDDEN", "CONV_CHANNELS", "DROPOUT")
    EXPERT_LOSS, ROUTER_ENTROPY, MASK_SILENT, AMP = "EXPERT_LOSS", "ROUTER_ENTROPY", "MASK_SILENT", "AMP"
    OUTPUT, LOG = "OUTPUT", "LOG"
    RESUME, RESUME_FILE, INIT_MODEL, REFIT_NORMALISATION = "RESUME", "RESUME_FILE", "INIT_MODEL", "REFIT_NORMALISATION"

    def name(self):
        return "train"

    def displayName(self):  # noqa: N802
        return self.tr("Train model")

    def group(self):
        return self.tr(presentation.group(self))

    def groupId(self):  # noqa: N802
        return presentation.group_id(self)

    def tags(self):
        return presentation.tags(self)

    def icon(self):
        return presentation.icon()

    def svgIconPath(self):  # noqa: N802
        return presentation.ICON_PATH

    def helpUrl(self):  # noqa: N802
        return presentation.help_url(self)

    def shortHelpString(self):  # noqa: N802
        return presentation.labelled_help(self, self.tr(
            "Trains a soil-moisture model on a dataset from ismoe:preparedataset and writes the best model "
            "(lowest validation loss). Training windows are cut from the cube on the fly.\n\n"
            "DATASET: the dataset file (.npz), or a .zarr dataset folder (its path, or the .zmetadata file in it), "
            "which is read lazily.\n"
            "CUBE_IN_MEMORY: auto (default) holds the cube in memory when its normalised copies fit in the memory "
            "available, and otherwise draws the training windows chunk by chunk from the cube (blocks shuffled, "
            "many windows per block, the next block read in the background); memory or chunked force one.\n"
            "MODEL: ismoe (one CNN-LSTM expert per factor, combined by MIXTURE; the per-factor weights are the "
            "interpretation), cnn_lstm (one CNN-LSTM on all factors, the standard baseline) or mean_expert (the "
            "same per-factor experts with equal weights).\n"
            "MIXTURE (ismoe): additive (default): SM = mu + sum of the factors' contributions, no router; a "
            "factor's weight on a pixel-day is its share of the squared departure of the contributions from "
            "their training means, so the weights sum to 1 and the intercept mu is nobody's weight. convex: the "
            "paper's literal form, SM = sum w_e * SM_e with softmax router weights and every expert a full SM "
            "estimate; it cannot add up two drivers. scaled: SM = mu + E * sum w_e * c_e, router weights over "
            "contributions. gated: SM = mu + sum g_e * c_e, each factor's contribution gated by the router "
            "(g = E * softmax, so a factor can count in one place and not in another); the weights are shares of "
            "the gated contributions' departures like additive's; use it with ROUTER_INPUT all_states. See the "
            "README's model section for the measured comparison.\n"
            "MEMORY: window (default): each day's estimate runs the experts' LSTM over its own SEQ_LEN-day "
            "window (memory capped at SEQ_LEN days). stateful: the LSTM runs through time and carries its "
            "state from day to day, so it can remember snowpack, deep storage or a dry spell for months; it is "
            "trained on sequences of SPIN_UP + SUPERVISED_DAYS days at one location with the loss on the last "
            "SUPERVISED_DAYS days (BATCH_SIZE counts supervised days), and ismoe:predict streams it (one LSTM "
            "step per pixel-day, reading the SPIN_UP days before DATE_FROM as warm-up). SEQ_LEN still sets the "
            "window of the silent-factor mask.\n"
            "ENSEMBLE: members trained together in one pass (member n's initial weights from SEED + n, the same "
            "batches); one model file holds them all. ismoe:predict then writes the members' mean as sm.tif and "
            "weight_<factor>.tif, and their standard deviation as sm_spread.tif and weight_spread_<factor>.tif; "
            "ismoe:evaluate scores the mean and every member, the spread of each metric, spread-skill and the "
            "members' agreement on the top factor. Early stopping and the best checkpoint follow the ensemble "
            "mean's validation loss. 1 = a single model.\n"
            "SPLIT: time (default): train before VAL_START, test after TEST_START, at every location. locations: "
            "cross-validation over the locations (stations or target pixels): FOLDS folds, one model per fold "
            "trained without its locations (all folds in one pass, in one model file); the test score, and "
            "ismoe:evaluate, use each location's out-of-fold estimate (from the model that never saw it). "
            "blocks (grids): folds of BLOCK_SIZE x BLOCK_SIZE pixel blocks (0 = 4 x PATCH_SIZE, at least 8), and "
            "no training location within PATCH_SIZE pixels of a held-out one, so no training patch overlaps a "
            "held-out pixel. FOLD_LAYER / FOLD_ID_FIELD / FOLD_FIELD: a station layer whose FOLD_FIELD names each "
            "station's fold (exactly FOLDS distinct values), instead of random folds.\n"
            "THREADS: torch CPU threads; 0 (default) = the CPUs the load average leaves idle, at least 1 (on a "
            "busy machine more threads than idle CPUs make training many times slower).\n"
            "DEVICE: auto uses a CUDA GPU when torch sees one, else the CPU; cuda without a GPU falls back to "
            "the CPU with a warning.\n"
            "EPOCHS, BATCH_SIZE, LEARNING_RATE (peak of the one-cycle schedule, or the constant rate with "
            "LR_SCHEDULE=constant), SEED (same seed, same machine: "
            "same model), SAMPLES_PER_EPOCH (random windows per epoch; 0 = all), PATIENCE (early stopping).\n"
            "CONSECUTIVE_DAYS: above 1, windows are drawn as runs of this many consecutive days at one location; "
            "their windows overlap, so the convolution runs once per day for all of them (more windows per "
            "second), but neighbouring days add little information: per window trained, the model learns less. "
            "BATCH_SIZE still counts windows. Default 1: every window drawn on its own.\n"
            "VAL_START / TEST_START: the time split (YYYY-MM-DD): train before VAL_START, validate until "
            "TEST_START, test after. Default: the last 25% of the days are the test period, the 15% before "
            "it validation.\n"
            "GAP_POLICY: skip windows with missing inputs at the pixel (default) or fill them with the mean. "
            "The log gives every station's number of training, validation and test samples; a location with no "
            "training sample gets a warning that names it and the layer with no data (or gaps) at its pixel.\n"
            "ROUTER_INPUT: what the routing network sees: expert_states (each expert's own LSTM state; "
            "default), all_states, inputs (the factors' centre-pixel sequences) or inputs_doy (plus the day of "
            "year; it tends to learn the season rather than the driver).\n"
            "HIDDEN, CONV_CHANNELS, DROPOUT: expert sizes.\n"
            "EXPERT_LOSS: weight of the per-expert loss (each expert must explain soil moisture from its own "
            "factor; convex mixture only). ROUTER_ENTROPY: optional entropy term on the routing weights (0 = off; "
            "convex and scaled mixtures).\n"
            "MASK_SILENT: a factor whose input is constant over the window at a pixel (e.g. snow where there is "
            "none) gets routing weight 0.\n"
            "AMP: bf16 autocast on CUDA GPUs. After training, the validation samples are scored with and "
            "without it; a model whose validation CC changes by more than 0.01 is recorded as such and "
            "ismoe:predict runs it in fp32.\n"
            "OUTPUT: the model file (.pt, loaded without running code). LOG: the training log (JSON lines: "
            "loss per epoch, validation CC and RMSE).\n"
            "Outputs: TEST_CC is pooled over all test samples (with several locations it mostly rewards each "
            "location's mean level); TEST_CC_MEDIAN_LOCATION is the median over the locations (at least 30 test "
            "days) of each location's CC over time, the skill ismoe:evaluate leads with.\n"
            "Cancel stops within one batch and keeps the best model so far.\n\n"
            "RESUME: training writes a checkpoint at the end of every epoch beside the model file (OUTPUT with "
            "'.resume' appended: model, optimizer, learning-rate schedule, random-number states, epoch, best so far "
            "and early-stopping counters); it is removed when training completes and kept when it is cancelled or "
            "killed. With RESUME, training continues from it and ends as the uninterrupted run with the same SEED "
            "would have; without a checkpoint it starts at epoch 1. RESUME_FILE: a checkpoint elsewhere (implies "
            "RESUME). A checkpoint of another dataset or with other parameters is refused, naming what differs "
            "(DEVICE and THREADS may change).\n"
            "INIT_MODEL: a trained model file to fine-tune on DATASET (e.g. another region): the same factors and "
            "variables, PATCH_SIZE and SEQ_LEN; its architecture (MODEL, MIXTURE, HIDDEN, ..., ENSEMBLE) is kept. "
            "Its normalisation is kept (the new data are scaled as the model was trained), or with "
            "REFIT_NORMALISATION re-fitted to DATASET. Another factor set is refused, naming the factors that "
            "differ."))

    def initAlgorithm(self, config=None):  # noqa: N802
        adv = PARAM_FLAG_ADVANCED
        self.addParameter(QgsProcessingParameterFile(self.DATASET, self.tr("Dataset file"),
                                                     fileFilter=self.tr(DATASET_FILTER)))
        self.addParameter(QgsProcessingParameterEnum(self.MODEL, self.tr("Model"), MODEL_TYPES, defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.MIXTURE, self.tr("Mixture (ismoe)"), MIXTURES,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(self.MEMORY, self.tr("Expert memory"), MEMORIES,
                                                     defaultValue=0))
        # no minimum: the core's message says what the number means
        self.addParameter(QgsProcessingParameterNumber(self.ENSEMBLE, self.tr("Ensemble members"), NUMBER_INTEGER,
                                                       DEFAULT_ENSEMBLE))
        # no minimum on the two below: the core's message says what the number means
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.SPIN_UP, self.tr("Spin-up days (stateful memory)"), NUMBER_INTEGER, 365), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.SUPERVISED_DAYS, self.tr("Supervised days per sequence (stateful memory)"), NUMBER_INTEGER,
            32), adv))
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), DEVICES, defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.EPOCHS, self.tr("Epochs"), NUMBER_INTEGER, 30, False, 1))
        self.addParameter(QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size"), NUMBER_INTEGER, 64,
                                                       False, 1))
        self.addParameter(QgsProcessingParameterNumber(self.LEARNING_RATE, self.tr("Learning rate"), NUMBER_DOUBLE,
                                                       0.004, False, 1e-7))
        self.addParameter(QgsProcessingParameterNumber(self.SEED, self.tr("Random seed"), NUMBER_INTEGER, 42))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.SAMPLES_PER_EPOCH, self.tr("Samples per epoch (0 = all)"), NUMBER_INTEGER, 20000, False, 0), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.PATIENCE, self.tr("Early-stopping patience (epochs)"), NUMBER_INTEGER, 6, False, 1), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.CONSECUTIVE_DAYS, self.tr("Consecutive days per location in a batch"), NUMBER_INTEGER,
            1, False, 1, 366), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterEnum(
            self.LR_SCHEDULE, self.tr("Learning-rate schedule"), SCHEDULES, defaultValue=0), adv))
        self.addParameter(optional(QgsProcessingParameterString(self.VAL_START, self.tr("Validation start (YYYY-MM-DD)"))))
        self.addParameter(optional(QgsProcessingParameterString(self.TEST_START, self.tr("Test start (YYYY-MM-DD)"))))
        self.addParameter(add_param_flags(QgsProcessingParameterEnum(
            self.GAP_POLICY, self.tr("Windows with missing inputs"), GAP_POLICIES, defaultValue=0), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterEnum(
            self.ROUTER_INPUT, self.tr("Router input"), ROUTER_INPUTS, defaultValue=0), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.HIDDEN, self.tr("LSTM hidden size"), NUMBER_INTEGER, 64, False, 1), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.CONV_CHANNELS, self.tr("Convolution channels per expert"), NUMBER_INTEGER, 16, False, 1), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.DROPOUT, self.tr("Dropout"), NUMBER_DOUBLE, 0.1, False, 0.0, 0.9), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.EXPERT_LOSS, self.tr("Per-expert loss weight"), NUMBER_DOUBLE, 0.5, False, 0.0), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.ROUTER_ENTROPY, self.tr("Router entropy weight"), NUMBER_DOUBLE, 0.0), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterBoolean(
            self.MASK_SILENT, self.tr("Zero weight for factors without signal"), True), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterBoolean(
            self.AMP, self.tr("bf16 autocast on CUDA"), True), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads (0 = from the load)"), NUMBER_INTEGER, 0, False, 0), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterEnum(
            self.CUBE_IN_MEMORY, self.tr("Dataset cube in memory"), CUBE_MODES, defaultValue=0), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterEnum(
            self.SPLIT, self.tr("Held-out split"), SPLITS, defaultValue=0), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.FOLDS, self.tr("Folds (SPLIT locations/blocks)"), NUMBER_INTEGER, 5), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.BLOCK_SIZE, self.tr("Block size in pixels (SPLIT blocks; 0 = automatic)"), NUMBER_INTEGER, 0,
            False, 0), adv))
        self.addParameter(add_param_flags(optional(QgsProcessingParameterFeatureSource(
            self.FOLD_LAYER, self.tr("Station layer with a fold field"), [SOURCE_VECTOR_ANY])), adv))
        self.addParameter(add_param_flags(optional(QgsProcessingParameterField(
            self.FOLD_ID_FIELD, self.tr("Fold layer: station id field"), "station_id", self.FOLD_LAYER)), adv))
        self.addParameter(add_param_flags(optional(QgsProcessingParameterField(
            self.FOLD_FIELD, self.tr("Fold layer: fold field"), None, self.FOLD_LAYER)), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterBoolean(
            self.RESUME, self.tr("Resume from the checkpoint beside the model file"), False), adv))
        self.addParameter(add_param_flags(optional(QgsProcessingParameterFile(
            self.RESUME_FILE, self.tr("Resume checkpoint file (implies RESUME)"), extension="resume")), adv))
        self.addParameter(add_param_flags(optional(QgsProcessingParameterFile(
            self.INIT_MODEL, self.tr("Model to fine-tune (INIT_MODEL)"), extension="pt")), adv))
        self.addParameter(add_param_flags(QgsProcessingParameterBoolean(
            self.REFIT_NORMALISATION, self.tr("Re-fit the fine-tuned model's normalisation to the dataset"),
            False), adv))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("Model file"),
                                                                self.tr("ISMoE model (*.pt)")))
        self.addParameter(optional(QgsProcessingParameterFileDestination(
            self.LOG, self.tr("Training log"), self.tr("JSON lines (*.jsonl)"), createByDefault=False)))
        for name, desc in (("BEST_EPOCH", "Best epoch"), ("VAL_CC", "Validation CC"), ("VAL_RMSE", "Validation RMSE"),
                           ("TEST_CC", "Test CC (pooled)"), ("TEST_RMSE", "Test RMSE"),
                           ("TEST_CC_MEDIAN_LOCATION", "Test CC, median over locations")):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(desc)))

    def fold_labels(self, p, context, cube):
        """The fold of every station of the cube from FOLD_LAYER's FOLD_FIELD (None without a fold layer)."""
        src = self.parameterAsSource(p, self.FOLD_LAYER, context)
        if src is None:
            return None
        if not cube.station_ids:
            raise QgsProcessingException(f"{self.FOLD_LAYER}: the dataset has gridded targets, not stations: folds "
                                         f"from a station layer need a station dataset (use SPLIT=blocks for grids)")
        id_field = self.parameterAsString(p, self.FOLD_ID_FIELD, context) or "station_id"
        fold_field = self.parameterAsString(p, self.FOLD_FIELD, context)
        names = src.fields().names()
        for par, f in ((self.FOLD_ID_FIELD, id_field), (self.FOLD_FIELD, fold_field)):
            if not f or f not in names:
                raise QgsProcessingException(f"{par}: the fold layer has no field '{f}' (fields: {', '.join(names)})")
        folds = {}
        for feat in src.getFeatures():
            folds[str(feat[id_field])] = feat[fold_field]
        return [None if folds.get(str(s)) in (None, "") or str(folds.get(str(s))) == "NULL" else folds.get(str(s))
                for s in cube.station_ids]

    def existing_file(self, p, name, context, what):
        """An optional file parameter's path (None when empty); a missing file names the parameter."""
        path = self.parameterAsFile(p, name, context) if p.get(name) not in (None, "") else ""
        if not path:
            return None
        if not os.path.isfile(path):
            raise QgsProcessingException(f"{name}: file not found: '{path}' (give {what})")
        return path

    def resume_setting(self, p, context):
        """TrainConfig.resume: RESUME_FILE's path, else RESUME (True: the checkpoint beside OUTPUT)."""
        path = self.existing_file(p, self.RESUME_FILE, context,
                                  "the '<model>.pt.resume' checkpoint of a cancelled or interrupted training")
        return path or self.parameterAsBoolean(p, self.RESUME, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.require_torch()
        from ..data.cube import Cube
        from ..model.train import TrainConfig, train
        p = parameters
        path = self.parameterAsFile(p, self.DATASET, context)
        if not path or not os.path.exists(path):
            raise QgsProcessingException(f"{self.DATASET}: file not found: '{path}' (create it with "
                                         f"ismoe:preparedataset)")
        out = self.parameterAsFileOutput(p, self.OUTPUT, context)
        check_writable(out, self.OUTPUT)
        log_path = self.parameterAsFileOutput(p, self.LOG, context) or None
        if log_path:
            check_writable(log_path, self.LOG)
        self.lock_output(out, self.OUTPUT, feedback)          # issue 13: one writer per output
        self.lock_output(log_path, self.LOG, feedback)
        cube = self.run_core(Cube.load, path)
        cfg = TrainConfig(
            epochs=self.parameterAsInt(p, self.EPOCHS, context),
            batch_size=self.parameterAsInt(p, self.BATCH_SIZE, context),
            lr=self.parameterAsDouble(p, self.LEARNING_RATE, context),
            seed=self.parameterAsInt(p, self.SEED, context),
            device=DEVICES[self.parameterAsEnum(p, self.DEVICE, context)],
            samples_per_epoch=self.parameterAsInt(p, self.SAMPLES_PER_EPOCH, context),
            patience=self.parameterAsInt(p, self.PATIENCE, context),
            consecutive_days=self.parameterAsInt(p, self.CONSECUTIVE_DAYS, context),
            expert_loss=self.parameterAsDouble(p, self.EXPERT_LOSS, context),
            router_entropy=self.parameterAsDouble(p, self.ROUTER_ENTROPY, context),
            gap_policy=GAP_POLICIES[self.parameterAsEnum(p, self.GAP_POLICY, context)],
            val_start=optional_date(self.parameterAsString(p, self.VAL_START, context), self.VAL_START),
            test_start=optional_date(self.parameterAsString(p, self.TEST_START, context), self.TEST_START),
            amp=self.parameterAsBoolean(p, self.AMP, context),
            schedule=SCHEDULES[self.parameterAsEnum(p, self.LR_SCHEDULE, context)],
            supervised_days=self.parameterAsInt(p, self.SUPERVISED_DAYS, context),
            threads=self.parameterAsInt(p, self.THREADS, context),
            cube_in_memory=CUBE_MODES[self.parameterAsEnum(p, self.CUBE_IN_MEMORY, context)],
            split=SPLITS[self.parameterAsEnum(p, self.SPLIT, context)],
            folds=self.parameterAsInt(p, self.FOLDS, context),
            block_size=self.parameterAsInt(p, self.BLOCK_SIZE, context),
            fold_labels=self.fold_labels(p, context, cube),
            resume=self.resume_setting(p, context),
            init_model=self.existing_file(p, self.INIT_MODEL, context, "a model file written by ismoe:train"),
            refit_normalisation=self.parameterAsBoolean(p, self.REFIT_NORMALISATION, context))
        model_type = MODEL_TYPES[self.parameterAsEnum(p, self.MODEL, context)]
        options = dict(hidden=self.parameterAsInt(p, self.HIDDEN, context),
                       conv_channels=self.parameterAsInt(p, self.CONV_CHANNELS, context),
                       dropout=self.parameterAsDouble(p, self.DROPOUT, context),
                       router_input=ROUTER_INPUTS[self.parameterAsEnum(p, self.ROUTER_INPUT, context)],
                       mask_silent=self.parameterAsBoolean(p, self.MASK_SILENT, context),
                       mixture=MIXTURES[self.parameterAsEnum(p, self.MIXTURE, context)],
                       memory=MEMORIES[self.parameterAsEnum(p, self.MEMORY, context)],
                       members=self.parameterAsInt(p, self.ENSEMBLE, context))
        if options["memory"] == "stateful":       # a windowed model has no spin-up
            options["spin_up"] = self.parameterAsInt(p, self.SPIN_UP, context)
        if getattr(cfg, "split", "time") == "time":     # SPLIT=locations|blocks tests held-out places
            from ..data.cube import check_split
            self.run_core(check_split, cube, cfg.val_start, cfg.test_start, self.VAL_START, self.TEST_START)
        feedback.pushInfo(f"training {model_type} on {path}")
        res = self.staged_train(train, cube, out, log_path, model_type, cfg, options, feedback)
        if res["cancelled"] and self.interrupted_by:
            self.interrupt_note = (f"the best model so far (epoch {res['best_epoch']}, validation CC "
                                   f"{res.get('val_cc', float('nan')):.3f}) is kept in {out}; the run did not "
                                   f"finish (no test scores): score it with ismoe:evaluate")
        elif res["cancelled"]:
            feedback.reportError(f"training cancelled: the best model so far (epoch {res['best_epoch']}) is in {out}"
                                 + (f"; run again with RESUME to continue from {res['resume_checkpoint']}"
                                    if res.get("resume_checkpoint") else ""), False)
        nan = float("nan")
        return {self.OUTPUT: out, self.LOG: log_path, "BEST_EPOCH": res["best_epoch"],
                "VAL_CC": res.get("val_cc", nan), "VAL_RMSE": res.get("val_rmse", nan),
                "TEST_CC": res.get("test_cc", nan), "TEST_RMSE": res.get("test_rmse", nan),
                "TEST_CC_MEDIAN_LOCATION": res.get("test_cc_location_median", nan)}

    def staged_train(self, train, cube, out, log_path, model_type, cfg, options, feedback):
        """train(), its LOG written to a hidden temporary beside LOG (fileutil.staged_file) and moved onto it
        when train returns (finished, or cancelled with the best model so far); on an error no log is left.
        The model file is written by atomic moves only (model.io.save_model), so OUTPUT is never a partial
        file (its resume checkpoint stays beside it). A write error names the file and the parameter."""
        import contextlib

        from ..fileutil import staged_file, write_error
        with contextlib.ExitStack() as stack:
            tmp_log = stack.enter_context(staged_file(log_path, ".log", self.LOG, feedback.pushInfo)) \
                if log_path else None
            try:
                return self.run_core(train, cube, out, model_type, cfg, options, self.callbacks(feedback), tmp_log)
            except QgsProcessingException as exc:
                err = exc.__cause__
                name = os.path.abspath(str(getattr(err, "filename", None) or "")) if isinstance(err, OSError) else ""
                if tmp_log and name == os.path.abspath(tmp_log):
                    raise QgsProcessingException(str(write_error(err, log_path, self.LOG))) from None
                if name and (name.startswith(os.path.abspath(out)) or os.path.basename(name).startswith(".ismoe-")):
                    raise QgsProcessingException(str(write_error(err, out, self.OUTPUT))) from None
                if tmp_log:
                    raise QgsProcessingException(str(exc).replace(tmp_log, log_path)) from None
                raise
