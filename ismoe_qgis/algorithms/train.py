"""ismoe:train: dataset cube -> model file (ISMoE or a baseline)."""
import os

from qgis.core import QgsProcessingException, QgsProcessingOutputNumber

from ..options import CUBE_MODES, DEVICES, GAP_POLICIES, MEMORIES, MODEL_TYPES, ROUTER_INPUTS, SCHEDULES, SPLITS
from ..options import MIXTURE_DEFAULT, ROUTER_INPUT_DEFAULT
from ..options import MIXTURE_ENUM as MIXTURES      # the enum's frozen order (saved indices keep their meaning)
from .common import check_writable, optional_date
from .families import TorchAlgorithm
from .qgis_compat import SOURCE_VECTOR_ANY


DEFAULT_ENSEMBLE = 1       # see the README's ensemble section for the measurements behind it


class TrainAlgorithm(TorchAlgorithm):
    MODEL = "MODEL"
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

    def helpIntro(self):  # noqa: N802
        return self.tr(
            "Trains a soil-moisture model on a dataset from ismoe:preparedataset and writes the best model "
            "(lowest validation loss). Training windows are cut from the cube on the fly.")

    def helpOutro(self):  # noqa: N802
        return self.tr(
            "Outputs: TEST_CC is pooled over all test samples (with several locations it mostly rewards each "
            "location's mean level); TEST_CC_MEDIAN_LOCATION is the median over the locations (at least 30 test "
            "days) of each location's CC over time, the skill ismoe:evaluate leads with.\n"
            "Cancel stops within one batch and keeps the best model so far.")

    def initAlgorithm(self, config=None):  # noqa: N802
        tr = self.tr
        self.addDatasetParameter(help=tr(
            "the dataset file (.npz), or a .zarr dataset folder (its path, or the .zmetadata file in it), which is "
            "read lazily."))
        self.addParameterEnum(self.MODEL, tr("Model"), MODEL_TYPES, default=0, help=tr(
            "ismoe (one CNN-LSTM expert per factor, combined by MIXTURE; the per-factor weights are the "
            "interpretation), cnn_lstm (one CNN-LSTM on all factors, the standard baseline) or mean_expert (the "
            "same per-factor experts with equal weights)."))
        self.addParameterEnum(self.MIXTURE, tr("Mixture (ismoe)"), MIXTURES,
                              default=MIXTURES.index(MIXTURE_DEFAULT), help=tr(
            "gated (default): SM = mu + sum g_e * c_e, each factor's contribution gated by the router (g = E * "
            "softmax, so a factor can count in one place and not in another; with ROUTER_INPUT auto the gates see "
            "the factors' window means). additive: SM = mu + sum of the factors' contributions, no router. For "
            "both, ismoe:predict writes each factor's variance share (its share of the variance of its "
            "contribution at each pixel, by period, month and season: what the dock charts), and a weight raster "
            "holds its share of the squared departure of the (gated) contributions from their training means, so "
            "the weights sum to 1 and the intercept mu is nobody's weight. convex: the paper's literal form, "
            "SM = sum w_e * SM_e with softmax router weights and every expert a full SM estimate; it cannot add up "
            "two drivers. scaled: SM = mu + E * sum w_e * c_e, router weights over contributions. See the "
            "README's model section for the measured comparison."))
        self.addParameterEnum(self.MEMORY, tr("Expert memory"), MEMORIES, default=0, help=tr(
            "window (default): each day's estimate runs the experts' LSTM over its own SEQ_LEN-day window (memory "
            "capped at SEQ_LEN days). stateful: the LSTM runs through time and carries its state from day to day, "
            "so it can remember snowpack, deep storage or a dry spell for months; it is trained on sequences of "
            "SPIN_UP + SUPERVISED_DAYS days at one location with the loss on the last SUPERVISED_DAYS days "
            "(BATCH_SIZE counts supervised days), and ismoe:predict streams it (one LSTM step per pixel-day, "
            "reading the SPIN_UP days before DATE_FROM as warm-up). SEQ_LEN still sets the window of the "
            "silent-factor mask."))
        # no minimum: the core's message says what the number means
        self.addParameterInt(self.ENSEMBLE, tr("Ensemble members"), DEFAULT_ENSEMBLE, help=tr(
            "members trained together in one pass (member n's initial weights from SEED + n, the same batches); "
            "one model file holds them all. ismoe:predict then writes the members' mean as sm.tif and "
            "weight_<factor>.tif, and their standard deviation as sm_spread.tif and weight_spread_<factor>.tif; "
            "ismoe:evaluate scores the mean and every member, the spread of each metric, spread-skill and the "
            "members' agreement on the top factor. Early stopping and the best checkpoint follow the ensemble "
            "mean's validation loss. 1 = a single model."))
        # no minimum on the two below: the core's message says what the number means
        self.addParameterInt(self.SPIN_UP, tr("Spin-up days (stateful memory)"), 365, advanced=True)
        self.addParameterInt(self.SUPERVISED_DAYS, tr("Supervised days per sequence (stateful memory)"), 32,
                             advanced=True)
        self.addDeviceParameter()
        self.addParameterInt(self.EPOCHS, tr("Epochs"), 30, min=1, help=tr(
            "at most this many epochs are trained (early stopping, PATIENCE, may end training sooner)."))
        self.addParameterInt(self.BATCH_SIZE, tr("Batch size"), 64, min=1, help=tr("training windows per batch."))
        self.addParameterFloat(self.LEARNING_RATE, tr("Learning rate"), 0.004, min=1e-7, help=tr(
            "peak of the one-cycle schedule, or the constant rate with LR_SCHEDULE=constant."))
        self.addParameterInt(self.SEED, tr("Random seed"), 42, help=tr("same seed, same machine: same model."))
        self.addParameterInt(self.SAMPLES_PER_EPOCH, tr("Samples per epoch (0 = all)"), 20000, min=0, advanced=True,
                             help=tr("random windows per epoch; 0 = all."))
        self.addParameterInt(self.PATIENCE, tr("Early-stopping patience (epochs)"), 6, min=1, advanced=True,
                             help=tr("early stopping: training stops after this many epochs without a better "
                                     "validation loss."))
        self.addParameterInt(self.CONSECUTIVE_DAYS, tr("Consecutive days per location in a batch"), 1, min=1,
                             max=366, advanced=True, help=tr(
                                 "above 1, windows are drawn as runs of this many consecutive days at one location; "
                                 "their windows overlap, so the convolution runs once per day for all of them (more "
                                 "windows per second), but neighbouring days add little information: per window "
                                 "trained, the model learns less. BATCH_SIZE still counts windows. Default 1: every "
                                 "window drawn on its own."))
        self.addParameterEnum(self.LR_SCHEDULE, tr("Learning-rate schedule"), SCHEDULES, default=0, advanced=True)
        self.addParameterString(self.VAL_START, tr("Validation start (YYYY-MM-DD)"), optional=True, help=tr(
            "the time split (YYYY-MM-DD): train before VAL_START, validate until TEST_START, test after. Default: "
            "the last 25% of the days are the test period, the 15% before it validation."))
        self.addParameterString(self.TEST_START, tr("Test start (YYYY-MM-DD)"), optional=True, help=tr(
            "the first day of the test period (see VAL_START)."))
        self.addParameterEnum(self.GAP_POLICY, tr("Windows with missing inputs"), GAP_POLICIES, default=0,
                              advanced=True, help=tr(
                                  "skip windows with missing inputs at the pixel (default) or fill them with the "
                                  "mean. The log gives every station's number of training, validation and test "
                                  "samples; a location with no training sample gets a warning that names it and the "
                                  "layer with no data (or gaps) at its pixel."))
        self.addParameterEnum(self.ROUTER_INPUT, tr("Router input"), ROUTER_INPUTS,
                              default=ROUTER_INPUTS.index(ROUTER_INPUT_DEFAULT), advanced=True, help=tr(
                                  "what the routing network (or a gated mixture's gates) sees: auto (default): "
                                  "inputs_mean for the gated mixture, expert_states otherwise; expert_states (each "
                                  "expert's own LSTM state), all_states, inputs (the factors' centre-pixel "
                                  "sequences), inputs_doy (plus the day of year; it tends to learn the season rather "
                                  "than the driver) or inputs_mean (the factors' centre-pixel means over the "
                                  "window). The model file records the one used."))
        self.addParameterInt(self.HIDDEN, tr("LSTM hidden size"), 64, min=1, advanced=True,
                             help=tr("expert sizes, with CONV_CHANNELS and DROPOUT."))
        self.addParameterInt(self.CONV_CHANNELS, tr("Convolution channels per expert"), 16, min=1, advanced=True)
        self.addParameterFloat(self.DROPOUT, tr("Dropout"), 0.1, min=0.0, max=0.9, advanced=True)
        self.addParameterFloat(self.EXPERT_LOSS, tr("Per-expert loss weight"), 0.5, min=0.0, advanced=True, help=tr(
            "weight of the per-expert loss (each expert must explain soil moisture from its own factor; convex "
            "mixture only)."))
        self.addParameterFloat(self.ROUTER_ENTROPY, tr("Router entropy weight"), 0.0, advanced=True, help=tr(
            "optional entropy term on the routing weights (0 = off; convex and scaled mixtures)."))
        self.addParameterBool(self.MASK_SILENT, tr("Zero weight for factors without signal"), True, advanced=True,
                              help=tr("a factor whose input is constant over the window at a pixel (e.g. snow where "
                                      "there is none) gets routing weight 0."))
        self.addParameterBool(self.AMP, tr("bf16 autocast on CUDA"), True, advanced=True, help=tr(
            "bf16 autocast on CUDA GPUs. After training, the validation samples are scored with and without it; a "
            "model whose validation CC changes by more than 0.01 is recorded as such and ismoe:predict runs it in "
            "fp32."))
        self.addParameterInt(self.THREADS, tr("CPU threads (0 = from the load)"), 0, min=0, advanced=True, help=tr(
            "torch CPU threads; 0 (default) = the CPUs the load average leaves idle, at least 1 (on a busy machine "
            "more threads than idle CPUs make training many times slower)."))
        self.addParameterEnum(self.CUBE_IN_MEMORY, tr("Dataset cube in memory"), CUBE_MODES, default=0,
                              advanced=True, help=tr(
                                  "auto (default) holds the cube in memory when its normalised copies fit in the "
                                  "memory available, and otherwise draws the training windows chunk by chunk from "
                                  "the cube (blocks shuffled, many windows per block, the next block read in the "
                                  "background); memory or chunked force one."))
        self.addParameterEnum(self.SPLIT, tr("Held-out split"), SPLITS, default=0, advanced=True, help=tr(
            "time (default): train before VAL_START, test after TEST_START, at every location. locations: "
            "cross-validation over the locations (stations or target pixels): FOLDS folds, one model per fold "
            "trained without its locations (all folds in one pass, in one model file); the test score, and "
            "ismoe:evaluate, use each location's out-of-fold estimate (from the model that never saw it). "
            "blocks (grids): folds of BLOCK_SIZE x BLOCK_SIZE pixel blocks (0 = 4 x PATCH_SIZE, at least 8), and "
            "no training location within PATCH_SIZE pixels of a held-out one, so no training patch overlaps a "
            "held-out pixel."))
        self.addParameterInt(self.FOLDS, tr("Folds (SPLIT locations/blocks)"), 5, advanced=True)
        self.addParameterInt(self.BLOCK_SIZE, tr("Block size in pixels (SPLIT blocks; 0 = automatic)"), 0, min=0,
                             advanced=True)
        self.addParameterFeatureSource(self.FOLD_LAYER, tr("Station layer with a fold field"), [SOURCE_VECTOR_ANY],
                                       optional=True, advanced=True, help=tr(
                                           "a station layer whose FOLD_FIELD names each station's fold (exactly "
                                           "FOLDS distinct values), instead of random folds."))
        self.addParameterField(self.FOLD_ID_FIELD, tr("Fold layer: station id field"), self.FOLD_LAYER, "station_id",
                               optional=True, advanced=True, help=tr("the field of FOLD_LAYER with the station ids."))
        self.addParameterField(self.FOLD_FIELD, tr("Fold layer: fold field"), self.FOLD_LAYER, optional=True,
                               advanced=True)
        self.addParameterBool(self.RESUME, tr("Resume from the checkpoint beside the model file"), False,
                              advanced=True, help=tr(
                                  "training writes a checkpoint at the end of every epoch beside the model file "
                                  "(OUTPUT with '.resume' appended: model, optimizer, learning-rate schedule, "
                                  "random-number states, epoch, best so far and early-stopping counters); it is "
                                  "removed when training completes and kept when it is cancelled or killed. With "
                                  "RESUME, training continues from it and ends as the uninterrupted run with the "
                                  "same SEED would have; without a checkpoint it starts at epoch 1. A checkpoint of "
                                  "another dataset or with other parameters is refused, naming what differs (DEVICE "
                                  "and THREADS may change)."))
        self.addParameterFile(self.RESUME_FILE, tr("Resume checkpoint file (implies RESUME)"), extension="resume",
                              optional=True, advanced=True, help=tr("a checkpoint elsewhere (implies RESUME)."))
        self.addParameterFile(self.INIT_MODEL, tr("Model to fine-tune (INIT_MODEL)"), extension="pt", optional=True,
                              advanced=True, help=tr(
                                  "a trained model file to fine-tune on DATASET (e.g. another region): the same "
                                  "factors and variables, PATCH_SIZE and SEQ_LEN; its architecture (MODEL, MIXTURE, "
                                  "HIDDEN, ..., ENSEMBLE) is kept. Its normalisation is kept (the new data are scaled "
                                  "as the model was trained), or with REFIT_NORMALISATION re-fitted to DATASET. "
                                  "Another factor set is refused, naming the factors that differ."))
        self.addParameterBool(self.REFIT_NORMALISATION, tr("Re-fit the fine-tuned model's normalisation to the "
                                                           "dataset"), False, advanced=True)
        self.addParameterFileDestination(self.OUTPUT, tr("Model file"), tr("ISMoE model (*.pt)"), help=tr(
            "the model file (.pt, loaded without running code)."))
        self.addParameterFileDestination(self.LOG, tr("Training log"), tr("JSON lines (*.jsonl)"),
                                         createByDefault=False, optional=True, help=tr(
                                             "the training log (JSON lines: loss per epoch, validation CC and "
                                             "RMSE)."))
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
