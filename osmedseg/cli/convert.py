"""``osm_convert KIND ...``: write a raw dataset (atlas + unlabeled + test) from a published layout."""
from __future__ import annotations

import argparse
from types import ModuleType

from osmedseg.cli.checks import parse_checked
from osmedseg.cli.common import add_folder_args, add_seed_arg, cli_entry
from osmedseg.dataset_conversion import abdomen, folders, labels, nnunet, oasis, split, verse
from osmedseg.dataset_conversion.writer import DEFAULT_GEOMETRY_TOLERANCE, convert_dataset
from osmedseg.paths import root_folder


def _add_common(parser: argparse.ArgumentParser, default_name: str) -> None:
    target = parser.add_argument_group("target dataset")
    target.add_argument("-d", dest="dataset_id", type=int, required=True, metavar="ID",
                        help="dataset id of the output folder DatasetNNN_Name")
    target.add_argument("--name", default=None, help=f"dataset name (default: {default_name})")
    add_folder_args(target, "raw")
    target.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same name")
    roles = parser.add_argument_group("atlas and split (rules below)")
    roles.add_argument("--atlas", metavar="CASE", default=None, help="case id of the labeled atlas")
    roles.add_argument("--num-atlases", type=int, metavar="N", default=1,
                       help="number of labeled atlases (default 1; 2 or more for few-shot methods such as "
                            "EFSMedSegTrainer)")
    roles.add_argument("--num-unlabeled", type=int, metavar="N", default=None,
                       help="number of unlabeled images (default: every case not used otherwise)")
    roles.add_argument("--num-test", type=int, metavar="N", default=None,
                       help="number of labeled test cases (default: 25%% of the other labeled cases, at least 1)")
    add_seed_arg(roles)
    parser.add_argument("--geometry-tolerance", type=float, default=DEFAULT_GEOMETRY_TOLERANCE, metavar="TOL",
                        help="allowed image/label header difference: relative for spacing, in units of the largest "
                             "voxel size (at least 1 mm) for the origin, absolute for direction cosines. Beyond it a "
                             "label on the same grid is written with the image geometry and a warning "
                             "(default %(default)g)")


def _subparser(sub: argparse._SubParsersAction, kind: str, module: ModuleType, default_name: str,
               aliases: tuple[str, ...] = (), epilog: str = "") -> argparse.ArgumentParser:
    doc = module.__doc__.strip()
    parser = sub.add_parser(kind, aliases=list(aliases), help=doc.splitlines()[0], description=doc,
                            epilog=epilog + split.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(parser, default_name)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osm_convert", description="Write a raw dataset (atlas + unlabeled + test) "
                                     "from a published layout. 'osm_convert KIND -h' describes each layout.")
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    p = _subparser(sub, folders.KIND, folders, "the name of the images folder's parent", epilog=labels.__doc__)
    p.add_argument("--images", required=True, metavar="DIR", help="folder of image files")
    p.add_argument("--labels", required=True, metavar="DIR", help="folder of label files named like the images")
    p.add_argument("--label-channels", type=int, nargs="+", metavar="I", default=None,
                   help="4D one-hot / multi-channel labels: channel I becomes label 1, 2, ... in the order given "
                        "(voxels > 0.5)")
    p.add_argument("--label-map", metavar="JSON", default=None,
                   help='rename/merge ids (text or .json file): {"prostate": [1, 2], "lesion": 3} or '
                        '{"1": 1, "2": 1, "3": 2}; unlisted ids become background')
    p.add_argument("--label-names", metavar="JSON", default=None,
                   help='names of the output ids (text or .json file), e.g. {"prostate": 1} (default label_<id>)')
    p.add_argument("--channel-name", nargs="+", default=["MRI"], metavar="NAME",
                   help="channel name(s) for dataset.json, one per _0000, _0001, ... file (default MRI)")
    p.set_defaults(collect=lambda a: folders.collect(a.images, a.labels, a.label_channels, a.label_map,
                                                     a.label_names, a.channel_name))

    p = _subparser(sub, oasis.KIND, oasis, "OASIS (seg35) or OASIS4 (seg4)")
    p.add_argument("-i", dest="input", required=True, metavar="DIR", help="folder holding OASIS_OAS1_xxxx_MR1/")
    p.add_argument("--labels", type=int, choices=oasis.LABEL_SETS, default=35, help="label set (default 35)")
    p.set_defaults(collect=lambda a: oasis.collect(a.input, a.labels))

    p = _subparser(sub, abdomen.KIND, abdomen, "BCV", aliases=abdomen.ALIASES)
    p.add_argument("-i", dest="input", required=True, metavar="DIR", help="folder holding img00xx / seg00xx files")
    p.add_argument("--label-set", choices=abdomen.LABEL_SETS, default="auto",
                   help="4 organs (liver, spleen, kidneys) or the 13 BCV organs (default: from the largest id)")
    p.set_defaults(collect=lambda a: abdomen.collect(a.input, a.label_set))

    p = _subparser(sub, verse.KIND, verse, "VerSe")
    p.add_argument("-i", dest="input", required=True, metavar="DIR", help="VerSe folder (rawdata/ + derivatives/)")
    p.add_argument("--relabel", action="store_true", help="renumber the vertebra ids present 1, 2, ...")
    p.set_defaults(collect=lambda a: verse.collect(a.input, a.relabel))

    p = _subparser(sub, nnunet.KIND, nnunet, "the source name without DatasetNNN_")
    p.add_argument("-i", dest="input", required=True, metavar="DIR", help="nnU-Net raw dataset folder")
    p.set_defaults(collect=lambda a: nnunet.collect(a.input))
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    """Convert one source dataset; user-fixable problems exit with code 2 and a one-line message."""
    args = parse_checked(_parser(), argv)
    source = args.collect(args)
    convert_dataset(source, root_folder("raw", args.raw), args.dataset_id, args.name, args.atlas, args.num_unlabeled,
                    args.num_test, args.seed, args.overwrite, args.geometry_tolerance, args.num_atlases)
