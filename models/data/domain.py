"""Domain vocabulary of the scheme: skills by domain, sectors, education, geography.

Used by the data generator (to make realistic data) and by the feature code (distance
classes). Real exports are not limited to these values: skills, sectors and districts are free
strings in the input contract; the geography table only helps when a row has no coordinates.
"""

from __future__ import annotations

import numpy as np

# Skills grouped by domain. Soft skills are shared across all sectors.
SKILL_DOMAINS: dict[str, list[str]] = {
    "software": ["python", "java", "javascript", "sql", "html css", "react", "android development",
                 "software testing", "cloud computing", "git"],
    "data": ["data analysis", "excel", "machine learning", "power bi", "statistics", "data entry"],
    "networks": ["networking", "cybersecurity", "hardware troubleshooting", "linux administration"],
    "mechanical": ["autocad", "solidworks", "cnc operation", "welding", "fitting", "machining",
                   "quality control", "lean manufacturing"],
    "electrical": ["electrical wiring", "plc programming", "electronics repair", "solar installation",
                   "maintenance"],
    "finance": ["accounting", "tally", "gst filing", "bookkeeping", "financial analysis", "auditing",
                "banking operations"],
    "marketing": ["digital marketing", "seo", "social media", "content writing", "market research",
                  "sales", "customer service"],
    "health": ["pharmacology", "lab techniques", "patient care", "good manufacturing practice",
               "medical coding"],
    "logistics": ["supply chain", "inventory management", "procurement", "warehouse operations",
                  "fleet management"],
    "soft": ["communication", "teamwork", "leadership", "problem solving", "time management",
             "english", "hindi", "presentation", "negotiation"],
}
SKILLS: list[str] = [s for domain in SKILL_DOMAINS.values() for s in domain]
SKILL_INDEX = {s: i for i, s in enumerate(SKILLS)}

# Sector -> (skill domains it draws required skills from, sample job titles).
SECTORS: dict[str, tuple[list[str], list[str]]] = {
    "Information Technology": (["software", "data", "networks"],
                               ["Software Developer", "Web Developer", "QA Tester", "IT Support",
                                "Data Analyst"]),
    "Banking and Finance": (["finance", "data"],
                            ["Accounts Assistant", "Banking Operations", "Audit Assistant",
                             "Credit Analyst"]),
    "Manufacturing": (["mechanical", "electrical"],
                      ["Production Trainee", "Quality Inspector", "CNC Operator",
                       "Maintenance Technician"]),
    "Automotive": (["mechanical", "electrical"],
                   ["Service Technician", "Assembly Line Trainee", "Design Draughtsman"]),
    "Energy and Utilities": (["electrical", "mechanical"],
                             ["Solar Technician", "Plant Operations Trainee", "Electrician"]),
    "Retail and FMCG": (["marketing", "logistics"],
                        ["Sales Executive", "Store Operations", "Marketing Associate"]),
    "Healthcare and Pharma": (["health", "data"],
                              ["Lab Assistant", "Pharma Production Trainee", "Medical Coder"]),
    "Logistics": (["logistics", "data"],
                  ["Warehouse Associate", "Supply Chain Analyst", "Fleet Coordinator"]),
    "Telecom": (["networks", "electrical", "software"],
                ["Network Technician", "Field Engineer", "Customer Support Engineer"]),
    "Media and Marketing": (["marketing", "software"],
                            ["Content Writer", "Digital Marketing Intern", "Social Media Associate"]),
}
SECTOR_NAMES: list[str] = list(SECTORS)

# Education (eligible qualifications) -> (share among applicants, fields).
EDUCATION: dict[str, tuple[float, list[str]]] = {
    "Class 10": (0.05, ["General"]),
    "Class 12": (0.18, ["Science", "Commerce", "Arts"]),
    "ITI": (0.17, ["Electrician", "Fitter", "Welder", "COPA", "Mechanic"]),
    "Diploma": (0.17, ["Mechanical Engineering", "Electrical Engineering", "Computer Engineering",
                       "Pharmacy"]),
    "BA": (0.10, ["Economics", "English", "Journalism"]),
    "BSc": (0.10, ["Computer Science", "Chemistry", "Mathematics"]),
    "BCom": (0.11, ["Commerce", "Accounting"]),
    "BCA": (0.06, ["Computer Applications"]),
    "BBA": (0.04, ["Business Administration"]),
    "BPharma": (0.02, ["Pharmacy"]),
}

# Field -> skill domains the student's skills are drawn from.
FIELD_DOMAINS: dict[str, list[str]] = {
    "General": ["marketing", "logistics"], "Science": ["data", "health"],
    "Commerce": ["finance", "marketing"], "Arts": ["marketing"],
    "Electrician": ["electrical"], "Fitter": ["mechanical"], "Welder": ["mechanical"],
    "COPA": ["software", "data"], "Mechanic": ["mechanical", "electrical"],
    "Mechanical Engineering": ["mechanical"], "Electrical Engineering": ["electrical", "networks"],
    "Computer Engineering": ["software", "networks"], "Pharmacy": ["health"],
    "Economics": ["finance", "data"], "English": ["marketing"], "Journalism": ["marketing"],
    "Computer Science": ["software", "data"], "Chemistry": ["health", "data"],
    "Mathematics": ["data", "finance"], "Accounting": ["finance"],
    "Computer Applications": ["software", "data"], "Business Administration": ["marketing", "finance",
                                                                               "logistics"],
}

# Districts: (district, state, latitude, longitude, share of the scheme's population, rural share).
DISTRICTS: list[tuple[str, str, float, float, float, float]] = [
    ("Mumbai", "Maharashtra", 19.076, 72.878, 0.05, 0.02),
    ("Thane", "Maharashtra", 19.218, 72.978, 0.04, 0.20),
    ("Pune", "Maharashtra", 18.520, 73.857, 0.05, 0.30),
    ("Nagpur", "Maharashtra", 21.146, 79.088, 0.03, 0.35),
    ("New Delhi", "Delhi", 28.614, 77.209, 0.05, 0.03),
    ("Gurugram", "Haryana", 28.459, 77.027, 0.03, 0.25),
    ("Faridabad", "Haryana", 28.408, 77.318, 0.02, 0.25),
    ("Gautam Buddh Nagar", "Uttar Pradesh", 28.535, 77.391, 0.03, 0.30),
    ("Ghaziabad", "Uttar Pradesh", 28.669, 77.454, 0.03, 0.30),
    ("Lucknow", "Uttar Pradesh", 26.847, 80.946, 0.04, 0.35),
    ("Kanpur Nagar", "Uttar Pradesh", 26.449, 80.331, 0.03, 0.35),
    ("Bengaluru Urban", "Karnataka", 12.972, 77.595, 0.06, 0.10),
    ("Mysuru", "Karnataka", 12.296, 76.639, 0.02, 0.55),
    ("Chennai", "Tamil Nadu", 13.083, 80.271, 0.05, 0.02),
    ("Kancheepuram", "Tamil Nadu", 12.834, 79.703, 0.02, 0.55),
    ("Coimbatore", "Tamil Nadu", 11.017, 76.956, 0.03, 0.40),
    ("Hyderabad", "Telangana", 17.385, 78.487, 0.05, 0.05),
    ("Rangareddy", "Telangana", 17.390, 78.160, 0.02, 0.50),
    ("Kolkata", "West Bengal", 22.573, 88.364, 0.04, 0.02),
    ("Howrah", "West Bengal", 22.596, 88.264, 0.02, 0.40),
    ("Ahmedabad", "Gujarat", 23.023, 72.571, 0.04, 0.20),
    ("Gandhinagar", "Gujarat", 23.216, 72.637, 0.01, 0.45),
    ("Surat", "Gujarat", 21.170, 72.831, 0.03, 0.25),
    ("Jaipur", "Rajasthan", 26.912, 75.787, 0.03, 0.45),
    ("Patna", "Bihar", 25.594, 85.138, 0.03, 0.55),
    ("Bhopal", "Madhya Pradesh", 23.260, 77.413, 0.02, 0.40),
    ("Indore", "Madhya Pradesh", 22.720, 75.858, 0.02, 0.40),
    ("Ernakulam", "Kerala", 9.982, 76.300, 0.02, 0.40),
    ("Khordha", "Odisha", 20.296, 85.825, 0.02, 0.50),
    ("Kamrup Metropolitan", "Assam", 26.144, 91.736, 0.02, 0.30),
    ("Chandigarh", "Chandigarh", 30.733, 76.779, 0.01, 0.05),
    ("Ludhiana", "Punjab", 30.901, 75.857, 0.02, 0.40),
    ("Visakhapatnam", "Andhra Pradesh", 17.687, 83.218, 0.02, 0.45),
    ("Ranchi", "Jharkhand", 23.344, 85.310, 0.02, 0.60),
    ("Dehradun", "Uttarakhand", 30.317, 78.032, 0.01, 0.50),
]
DISTRICT_NAMES = [d[0] for d in DISTRICTS]
DISTRICT_INDEX = {d[0]: i for i, d in enumerate(DISTRICTS)}

# Distance classes, in order of preference (the scheme's placement order).
SAME_DISTRICT, NEIGHBOURING, SAME_STATE, ELSEWHERE, REMOTE = 0, 1, 2, 3, 4
DISTANCE_CLASS_NAMES = ["same district", "neighbouring district", "same state", "elsewhere", "remote"]
NEIGHBOUR_KM = 150.0  # two districts whose centres are closer than this count as neighbours


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km; vectorised over numpy arrays."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def distance_class(same_district, same_state, km, remote):
    """Vectorised distance class: remote > same district > neighbouring (< NEIGHBOUR_KM) > state > elsewhere.

    `km` may be NaN where coordinates are unknown; then only the district/state equality counts.
    """
    same_district = np.asarray(same_district, dtype=bool)
    same_state = np.asarray(same_state, dtype=bool)
    km = np.asarray(km, dtype=np.float64)
    out = np.full(same_district.shape, ELSEWHERE, dtype=np.int8)
    out[same_state] = SAME_STATE
    out[np.nan_to_num(km, nan=np.inf) < NEIGHBOUR_KM] = NEIGHBOURING
    out[same_district] = SAME_DISTRICT
    out[np.asarray(remote, dtype=bool)] = REMOTE
    return out
