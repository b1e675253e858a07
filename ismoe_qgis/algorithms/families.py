"""Parameter families: the parameters several algorithms share, declared once (issue 12 item 7).

A family is a base class between IsmoeAlgorithm and the algorithms that share those definitions (name,
type, label, default, flags); an algorithm calls the family's ``add...`` methods in initAlgorithm where the
parameter belongs in its form. What is really shared (tests/data/parameters.json shows the definitions):

    FactorLayersAlgorithm  preparedataset, predict            FACTORS, REFERENCE, START_DATE, STEP_DAYS
    TorchAlgorithm         train, predict, evaluate           DEVICE; DATASET (train, evaluate)
    RegionsAlgorithm       evaluate, seasonalimportance       REGIONS, REGION_FIELD

Where the help depends on what the algorithm does with the parameter, the algorithm passes it (``help=``);
where it does not (DEVICE, START_DATE, STEP_DAYS), the family owns it too. Parameters with the same name but
other definitions stay with their algorithms (THREADS: train's is required without a maximum, predict's
optional up to 4096; DATE_FROM/DATE_TO: other labels in predict and evaluate).
"""
from ..options import DEVICES
from .base import IsmoeAlgorithm
from .qgis_compat import SOURCE_RASTER, SOURCE_VECTOR_POLYGON

DATASET_FILTER = "ISMoE dataset (*.npz *.zarr *.zmetadata)"    # a .zarr cube is a folder: its path, or its .zmetadata


class FactorLayersAlgorithm(IsmoeAlgorithm):
    """Reads factor raster layers onto a grid (preparedataset, predict)."""
    FACTORS, REFERENCE, START_DATE, STEP_DAYS = "FACTORS", "REFERENCE", "START_DATE", "STEP_DAYS"

    def addFactorLayersParameter(self, help):  # noqa: N802
        return self.addParameterMultipleLayers(self.FACTORS, self.tr("Factor layers"), SOURCE_RASTER, help=help)

    def addReferenceGridParameter(self, help):  # noqa: N802
        return self.addParameterRasterLayer(self.REFERENCE, self.tr("Reference grid layer"), optional=True,
                                            help=help)

    def addUndatedLayersParameters(self):  # noqa: N802
        """START_DATE and STEP_DAYS: the dates of layers whose files carry none."""
        self.addParameterString(self.START_DATE, self.tr("Start date for undated layers (YYYY-MM-DD)"),
                                optional=True,
                                help=self.tr("the date of the first band of layers whose files carry no dates."))
        self.addParameterInt(self.STEP_DAYS, self.tr("Days between bands (undated layers)"), 1, min=1,
                             help=self.tr("days from one band to the next in those layers."))


class TorchAlgorithm(IsmoeAlgorithm):
    """Runs a model with torch on a device (train, predict, evaluate); train and evaluate read a dataset."""
    DEVICE, DATASET = "DEVICE", "DATASET"

    def addDeviceParameter(self, advanced=False):  # noqa: N802
        return self.addParameterEnum(self.DEVICE, self.tr("Device"), DEVICES, default=0, advanced=advanced,
                                     help=self.tr("auto uses a CUDA GPU when torch sees one, else the CPU; cuda "
                                                  "without a GPU falls back to the CPU with a warning."))

    def addDatasetParameter(self, help):  # noqa: N802
        return self.addParameterFile(self.DATASET, self.tr("Dataset file"), fileFilter=self.tr(DATASET_FILTER),
                                     help=help)


class RegionsAlgorithm(IsmoeAlgorithm):
    """Summarises by polygon regions (evaluate, seasonalimportance)."""
    REGIONS, REGION_FIELD = "REGIONS", "REGION_FIELD"

    def addRegionsParameters(self, help):  # noqa: N802
        """REGIONS (optional polygons; `help` says what they do here) and REGION_FIELD (their names)."""
        self.addParameterFeatureSource(self.REGIONS, self.tr("Regions (polygons)"), [SOURCE_VECTOR_POLYGON],
                                       optional=True, help=help)
        self.addParameterField(self.REGION_FIELD, self.tr("Region name field"), self.REGIONS, optional=True,
                               help=self.tr("optional field of REGIONS that names the regions (default: "
                                            "'feature <id>')."))
