# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl.html).
from . import test_readonly
from . import test_ingest
from . import test_report
from . import test_forensic
from . import test_forensic_capture
from . import test_settings
from . import test_interceptor
from . import test_ingress
from . import test_benchmark
from . import test_ui
