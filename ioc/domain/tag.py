"""What Tag writes: the fields of tomoScan's user-info records and the `UserInfo` value each takes."""

# The fields, named as tomoScan's databases name their PVs (docs/interface.md section 6) -> the `UserInfo` attribute
TAG_FIELDS = {
    "UserName": "first_name",
    "UserLastName": "last_name",
    "UserEmail": "email",
    "UserBadge": "badge",
    "UserInstitution": "institution",
    "UserInfoUpdate": "updated",
    "ProposalNumber": "proposal",
    "ProposalTitle": "title",
    "ESAFNumber": "esaf",
    "ESAFDOINumber": "esaf_doi",
    "ExperimentYearMonth": "year_month",
}
OPTIONAL_TAG_FIELDS = ("ESAFDOINumber",)  # tomoScan's templates lack them: their absence is normal
